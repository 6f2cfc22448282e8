// The noisy neighbour of field case A (wakeups): a process named `isc-socket` (BIND's socket thread name) that
// holds a raw ICMP socket and reads it forever, so the kernel wakes it for every ICMP packet on the host or
// namespace -- e.g. each one `ping -i 0.002` sends. The same as probe-library/tests/kernel.rs's Python
// listener (prctl(PR_SET_NAME) + SOCK_RAW/IPPROTO_ICMP + recv loop), as a static binary for a tiny image.
// Needs CAP_NET_RAW (in the container runtimes' default set). Exits 0 on SIGTERM/SIGINT (it may be PID 1).
// Prints the number of packets read so far to stdout every `-s SECONDS` (default 0 = never).
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static void stop(int sig) { _exit(sig == SIGTERM || sig == SIGINT ? 0 : 1); }

int main(int argc, char **argv) {
    long every = 0;
    int opt;
    while ((opt = getopt(argc, argv, "s:")) != -1) {
        if (opt != 's') {
            fprintf(stderr, "usage: %s [-s SECONDS]\n", argv[0]);
            return 2;
        }
        every = strtol(optarg, NULL, 10);
    }
    struct sigaction term = {.sa_handler = stop};
    sigemptyset(&term.sa_mask);
    sigaction(SIGTERM, &term, NULL);
    sigaction(SIGINT, &term, NULL);
    if (prctl(PR_SET_NAME, "isc-socket", 0, 0, 0) != 0) {
        perror("isc-socket: prctl");
        return 1;
    }
    int fd = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
    if (fd < 0) {
        perror("isc-socket: socket(AF_INET, SOCK_RAW, IPPROTO_ICMP)");
        return 1;
    }
    fprintf(stderr, "isc-socket: reading ICMP (pid %d)\n", (int)getpid());
    char buf[2048];
    unsigned long long packets = 0;
    time_t last = time(NULL);
    for (;;) {
        if (recv(fd, buf, sizeof buf, 0) < 0) {
            perror("isc-socket: recv");
            return 1;
        }
        packets++;
        if (every > 0 && time(NULL) - last >= every) {
            last = time(NULL);
            printf("%llu\n", packets);
            fflush(stdout);
        }
    }
}
