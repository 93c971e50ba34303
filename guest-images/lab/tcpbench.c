/* tcpbench: TCP throughput for the lab benchmark's Debian guest (busybox nc
 * copies through a small buffer, a packet per KiB), built statically by
 * lab.sh.
 *   tcpbench send HOST PORT BYTES   connects, sends BYTES in 64 KiB writes, closes
 *   tcpbench sink PORT              accepts one connection, reads it to EOF, closes
 * Exits 0 when all went through, 1 with a message otherwise. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static char buf[65536];

static int fail(const char *what) {
    perror(what);
    return 1;
}

int main(int argc, char **argv) {
    if (argc == 5 && strcmp(argv[1], "send") == 0) {
        struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[3]))};
        if (inet_pton(AF_INET, argv[2], &addr.sin_addr) != 1) return fail("address");
        int s = socket(AF_INET, SOCK_STREAM, 0);
        if (s < 0 || connect(s, (struct sockaddr *)&addr, sizeof addr) < 0) return fail("connect");
        long long left = atoll(argv[4]);
        while (left > 0) {
            ssize_t n = write(s, buf, left < (long long)sizeof buf ? (size_t)left : sizeof buf);
            if (n <= 0) return fail("send");
            left -= n;
        }
        return close(s) < 0 ? fail("close") : 0;
    }
    if (argc == 3 && strcmp(argv[1], "sink") == 0) {
        struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[2]))};
        int one = 1, s = socket(AF_INET, SOCK_STREAM, 0);
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (s < 0 || bind(s, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(s, 1) < 0) return fail("listen");
        int c = accept(s, NULL, NULL);
        if (c < 0) return fail("accept");
        for (;;) {
            ssize_t n = read(c, buf, sizeof buf);
            if (n == 0) return close(c) < 0 ? fail("close") : 0;
            if (n < 0) return fail("receive");
        }
    }
    fprintf(stderr, "usage: tcpbench send HOST PORT BYTES | tcpbench sink PORT\n");
    return 2;
}
