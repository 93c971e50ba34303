/* blkbench: block throughput through the Linux virtio-blk driver for the
 * lab benchmark's Debian guest, built statically by lab.sh. Every request
 * bypasses the guest's page cache (O_DIRECT, as dd's iflag=direct and
 * oflag=direct), and the guest times the whole run itself, so the console's
 * latency is not in it.
 *   blkbench seqread|seqwrite|randread|randwrite DEVICE MIB
 * seq: 1 MiB requests over the first MIB MiB of DEVICE, in order; rand:
 * 4 KiB requests at pseudo-random 4 KiB-aligned offsets within the first
 * MIB MiB, MIB MiB in all. Prints "blkbench: MODE BYTES bytes in NS ns"
 * and exits 0, or a message and 1. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: blkbench seqread|seqwrite|randread|randwrite DEVICE MIB\n");
        return 1;
    }
    const char *mode = argv[1];
    int seq = strncmp(mode, "seq", 3) == 0;
    int write = strstr(mode, "write") != NULL;
    long long span = atoll(argv[3]) << 20;
    size_t request = seq ? 1 << 20 : 4096;
    if (span < (long long)request) {
        fprintf(stderr, "blkbench: MIB must be at least 1\n");
        return 1;
    }
    int fd = open(argv[2], (write ? O_WRONLY : O_RDONLY) | O_DIRECT);
    if (fd < 0) {
        perror("blkbench: open");
        return 1;
    }
    void *buf;
    if (posix_memalign(&buf, 4096, request) != 0) {
        fprintf(stderr, "blkbench: out of memory\n");
        return 1;
    }
    memset(buf, 0x5a, request);
    unsigned long long state = 0x9e3779b97f4a7c15ULL;
    long long requests = span / (long long)request;
    long long start = now_ns();
    for (long long i = 0; i < requests; i++) {
        long long offset = i * (long long)request;
        if (!seq) {
            state = state * 6364136223846793005ULL + 1442695040888963407ULL;
            offset = (long long)((state >> 16) % (unsigned long long)requests) * 4096;
        }
        ssize_t n = write ? pwrite(fd, buf, request, offset) : pread(fd, buf, request, offset);
        if (n != (ssize_t)request) {
            perror("blkbench: request");
            return 1;
        }
    }
    long long elapsed = now_ns() - start;
    printf("blkbench: %s %lld bytes in %lld ns\n", mode, span, elapsed);
    return close(fd) == 0 ? 0 : 1;
}
