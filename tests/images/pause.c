// The pod sandbox ("pause") image's only program: holds the pod's namespaces open and does nothing else.
// Sleeps until SIGTERM/SIGINT (exits 0), and reaps zombies, since it is PID 1 when the pod shares its PID
// namespace. A PID 1 ignores signals it has no handler for, hence the handlers. Built with `gcc -static`.
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { _exit(sig == SIGTERM || sig == SIGINT ? 0 : 1); }

static void reap(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(int argc, char **argv) {
    if (argc > 1 && (strcmp(argv[1], "-v") == 0 || strcmp(argv[1], "--version") == 0)) {
        puts("pause (sonde test image) 3.10");
        return 0;
    }
    struct sigaction term = {.sa_handler = stop};
    struct sigaction chld = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP | SA_RESTART};
    sigemptyset(&term.sa_mask);
    sigemptyset(&chld.sa_mask);
    if (sigaction(SIGTERM, &term, NULL) || sigaction(SIGINT, &term, NULL) || sigaction(SIGCHLD, &chld, NULL)) {
        perror("pause: sigaction");
        return 1;
    }
    for (;;) pause();
}
