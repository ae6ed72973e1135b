/*
 * runwait.c: run one benchmark driver and report its peak RSS.
 *
 *   runwait [--preload LIB] [--] PROGRAM [ARGS...]
 *
 * This is not a workload but the launcher the runner (src/pygomalloc/_bench.py)
 * puts between itself and each driver.  Why: Linux folds the high-water RSS
 * of a process's old address space into its ru_maxrss at execve, so a driver
 * forked straight from the Python runner reports at least the runner's own
 * RSS (~20 MiB, seen here), which hides the differences between allocators
 * on small workloads.  This launcher is a small C program: the driver is
 * forked from its address space (about 1 MiB), and its peak RSS is read with
 * getrusage(RUSAGE_CHILDREN) after it is reaped (it is the only child, so the
 * maximum over children is its own).
 *
 * The driver's environment gets LD_PRELOAD=LIB, or no LD_PRELOAD at all
 * without --preload; the launcher itself runs without the preload, so it is
 * the same for every allocator.  After the driver exits the launcher prints
 *   RUSAGE maxrss_kib=<n> utime=<s> stime=<s>
 * signal=<n>
 * on stdout (after the driver's own output; signal is the one that killed the
 * driver, or 0) and exits with the driver's exit status (128 + signal if it
 * was killed).
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static void usage(void)
{
    fputs("usage: runwait [--preload LIB] [--] PROGRAM [ARGS...]\n", stderr);
    exit(2);
}

int main(int argc, char **argv)
{
    const char *preload = NULL;
    int i = 1;
    while (i < argc && strncmp(argv[i], "--", 2) == 0) {
        if (strcmp(argv[i], "--") == 0) {
            i++;
            break;
        }
        if (strcmp(argv[i], "--preload") == 0 && i + 1 < argc) {
            preload = argv[i + 1];
            i += 2;
        } else {
            usage();
        }
    }
    if (i >= argc)
        usage();

    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        perror("runwait: fork");
        return 126;
    }
    if (pid == 0) {
        if (preload != NULL)
            setenv("LD_PRELOAD", preload, 1);
        else
            unsetenv("LD_PRELOAD");
        execv(argv[i], &argv[i]);
        fprintf(stderr, "runwait: cannot execute %s: %s\n", argv[i], strerror(errno));
        _exit(127);
    }

    int status;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) {
            perror("runwait: waitpid");
            return 126;
        }
    }
    struct rusage ru;
    if (getrusage(RUSAGE_CHILDREN, &ru) != 0) {
        perror("runwait: getrusage");
        return 126;
    }
    int sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
    printf("RUSAGE maxrss_kib=%ld utime=%ld.%06ld stime=%ld.%06ld signal=%d\n", ru.ru_maxrss,
           (long)ru.ru_utime.tv_sec, (long)ru.ru_utime.tv_usec, (long)ru.ru_stime.tv_sec,
           (long)ru.ru_stime.tv_usec, sig);
    fflush(stdout);
    if (sig != 0)
        return 128 + sig;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 126;
}
