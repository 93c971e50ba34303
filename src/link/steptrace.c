// steptrace: single-steps every thread of a program and writes, in the
// order first executed, each distinct offset into its executable image.
// profile-hot-text.sh turns these offsets into the link order of rvmm's
// hot functions. A developer tool: it is slow (a few µs per instruction).
//
//   steptrace OFFSETS_OUT READY_FILE -- PROGRAM ARGS...
//
// ASLR is off in the child. Once READY_FILE (where the caller sends the
// program's output) contains "ready", steptrace waits 0.3 s more, sends
// SIGTERM, and keeps tracing until the program exits, so the offsets
// cover start-up, the idle VM and shutdown.
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/personality.h>
#include <sys/ptrace.h>
#include <sys/time.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void on_alarm(int sig) { (void)sig; }

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int file_says_ready(const char *path) {
    static char buf[1 << 16];
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    return strstr(buf, "ready") != NULL;
}

// The executable image's lowest address and length, from /proc/PID/maps.
static void find_image(pid_t pid, const char *program, uint64_t *base, uint64_t *len) {
    char maps[64], line[PATH_MAX + 128], want[PATH_MAX];
    if (!realpath(program, want)) {
        perror(program);
        exit(1);
    }
    snprintf(maps, sizeof maps, "/proc/%d/maps", pid);
    FILE *f = fopen(maps, "r");
    *base = 0;
    *len = 0;
    while (f && fgets(line, sizeof line, f)) {
        uint64_t lo, hi;
        char path[PATH_MAX] = "";
        if (sscanf(line, "%lx-%lx %*s %*s %*s %*s %s", &lo, &hi, path) < 2)
            continue;
        if (strcmp(path, want))
            continue;
        if (!*base)
            *base = lo;
        *len = hi - *base;
    }
    if (f)
        fclose(f);
    if (!*base) {
        fprintf(stderr, "steptrace: %s is not mapped in %d\n", want, pid);
        exit(1);
    }
}

int main(int argc, char **argv) {
    if (argc < 5 || strcmp(argv[3], "--")) {
        fprintf(stderr, "usage: steptrace OFFSETS_OUT READY_FILE -- PROGRAM ARGS...\n");
        return 2;
    }
    const char *ready_file = argv[2];
    char **program = argv + 4;
    FILE *out = fopen(argv[1], "w");
    if (!out) {
        perror(argv[1]);
        return 1;
    }
    pid_t child = fork();
    if (child == 0) {
        personality(ADDR_NO_RANDOMIZE);
        ptrace(PTRACE_TRACEME, 0, 0, 0);
        raise(SIGSTOP);
        execv(program[0], program);
        _exit(127);
    }
    int status;
    waitpid(child, &status, 0);
    ptrace(PTRACE_SETOPTIONS, child, 0,
           PTRACE_O_TRACECLONE | PTRACE_O_TRACEEXEC | PTRACE_O_EXITKILL);
    ptrace(PTRACE_CONT, child, 0, 0);

    // A timer interrupts waitpid while every thread sleeps in a system call.
    struct sigaction sa = {0};
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, 0);
    struct itimerval tick = {{0, 100000}, {0, 100000}};
    setitimer(ITIMER_REAL, &tick, 0);

    uint64_t base = 0, len = 0;
    uint8_t *seen = NULL;
    long steps = 0;
    int terminated = 0;
    double ready_at = 0, checked_at = 0;
    for (;;) {
        pid_t tid = waitpid(-1, &status, __WALL);
        if (tid < 0 && errno != EINTR)
            break;
        if (tid > 0) {
            if (WIFEXITED(status) || WIFSIGNALED(status)) {
                if (tid == child)
                    break;
                continue;
            }
            int sig = WSTOPSIG(status), event = status >> 16, deliver = 0;
            if (sig == SIGTRAP && event == PTRACE_EVENT_EXEC) {
                find_image(child, program[0], &base, &len);
                seen = calloc(len, 1);
            } else if (sig == SIGTRAP && event == 0 && seen) {
                struct user_regs_struct regs;
                ptrace(PTRACE_GETREGS, tid, 0, &regs);
                uint64_t off = regs.rip - base;
                if (off < len && !seen[off]) {
                    seen[off] = 1;
                    fprintf(out, "%lx\n", off);
                }
                steps++;
            } else if (sig != SIGTRAP && sig != SIGSTOP) {
                // A new thread's first stop is a SIGSTOP: not the program's.
                deliver = sig;
            }
            ptrace(seen ? PTRACE_SINGLESTEP : PTRACE_CONT, tid, 0, deliver);
        }
        double t = now();
        if (!terminated && t - checked_at > 0.1) {
            checked_at = t;
            if (!ready_at) {
                if (file_says_ready(ready_file))
                    ready_at = t;
            } else if (t - ready_at > 0.3) {
                kill(child, SIGTERM);
                terminated = 1;
            }
        }
    }
    fprintf(stderr, "steptrace: %ld instructions\n", steps);
    fclose(out);
    return 0;
}
