/* vsock: a small AF_VSOCK stream tool for the lab's Debian guest (busybox
 * has none), built statically by lab.sh.
 *   vsock listen PORT        accepts one connection on PORT and copies what
 *                            it receives to stdout, until the peer closes
 *   vsock echo PORT          accepts one connection on PORT and sends back
 *                            what it receives, until the peer closes
 *   vsock connect CID PORT   connects to CID:PORT, sends stdin (then shuts
 *                            its sending side), and copies what it
 *                            receives to stdout until the peer closes
 * Exits 0 when the connection ended in order, 1 with a message otherwise. */
#include <linux/vm_sockets.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int fail(const char *what) {
    perror(what);
    return 1;
}

/* Writes all of buf to fd. */
static int write_all(int fd, const char *buf, ssize_t len) {
    while (len > 0) {
        ssize_t n = write(fd, buf, (size_t)len);
        if (n < 0) return -1;
        buf += n;
        len -= n;
    }
    return 0;
}

/* Copies from `from` to `to` until EOF. */
static int copy(int from, int to, const char *what) {
    static char buf[65536];
    for (;;) {
        ssize_t n = read(from, buf, sizeof buf);
        if (n == 0) return 0;
        if (n < 0 || write_all(to, buf, n) < 0) return fail(what);
    }
}

static int accept_one(unsigned port) {
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (s < 0) return fail("socket");
    struct sockaddr_vm addr = {.svm_family = AF_VSOCK, .svm_port = port, .svm_cid = VMADDR_CID_ANY};
    if (bind(s, (struct sockaddr *)&addr, sizeof addr) < 0) return fail("bind");
    if (listen(s, 1) < 0) return fail("listen");
    int c = accept(s, NULL, NULL);
    if (c < 0) return fail("accept");
    close(s);
    return c;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "listen") == 0) {
        int c = accept_one((unsigned)atoi(argv[2]));
        return c < 0 ? 1 : copy(c, 1, "receiving");
    }
    if (argc == 3 && strcmp(argv[1], "echo") == 0) {
        int c = accept_one((unsigned)atoi(argv[2]));
        return c < 0 ? 1 : copy(c, c, "echoing");
    }
    if (argc == 4 && strcmp(argv[1], "connect") == 0) {
        int s = socket(AF_VSOCK, SOCK_STREAM, 0);
        if (s < 0) return fail("socket");
        struct sockaddr_vm addr = {
            .svm_family = AF_VSOCK, .svm_port = (unsigned)atoi(argv[3]), .svm_cid = (unsigned)atoi(argv[2])};
        if (connect(s, (struct sockaddr *)&addr, sizeof addr) < 0) return fail("connect");
        if (copy(0, s, "sending")) return 1;
        shutdown(s, SHUT_WR);
        return copy(s, 1, "receiving");
    }
    fprintf(stderr, "usage: vsock listen PORT | vsock echo PORT | vsock connect CID PORT\n");
    return 2;
}
