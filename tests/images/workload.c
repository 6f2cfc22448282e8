// A test workload that gives every Sonde probe something to see, under a name of its choosing, so a test can
// tell two pods doing the same work apart in any probe's results.
//
//   workload NAME PORT   every process is named NAME (its comm); children exec /tmp/NAME, make syscalls and
//                        sleep, burn CPU, connect to 127.0.0.1:PORT, and send SYNs to 127.0.0.1:PORT+1, whose
//                        full accept queue drops them (retransmits)
//   workload oom NAME    a child named NAME allocates 64 MiB every 2 s: run it with a smaller memory limit
//
// Children die with the parent (PR_SET_PDEATHSIG); SIGTERM and SIGINT end the parent, so it stops at once as a
// container's PID 1.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static void sleep_ms(long ms)
{
	struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
	while (nanosleep(&t, &t) && errno == EINTR)
		;
}

static void on_signal(int sig)
{
	(void)sig;
	_exit(0);
}

// Forks a child that runs fn(arg) forever and dies with its parent.
static void child(void (*fn)(const char *, int), const char *name, int port)
{
	pid_t pid = fork();
	if (pid < 0)
		die("fork");
	if (pid)
		return;
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	signal(SIGTERM, SIG_DFL);
	signal(SIGINT, SIG_DFL);
	fn(name, port);
	_exit(0);
}

static int listener(int port, int backlog)
{
	int one = 1, fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(0x7f000001)};
	if (fd < 0)
		die("socket");
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&a, sizeof(a)) || listen(fd, backlog))
		die("listen");
	return fd;
}

static int connecting(int port, int flags)
{
	int fd = socket(AF_INET, SOCK_STREAM | flags, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(0x7f000001)};
	if (fd < 0)
		die("socket");
	if (connect(fd, (struct sockaddr *)&a, sizeof(a)) && errno != EINPROGRESS) {
		close(fd);
		return -1;
	}
	return fd;
}

// exec: /tmp/NAME is a link to this program, so the exec event's filename and the new task's comm are NAME.
static void execs(const char *name, int port)
{
	(void)port;
	char path[64];
	snprintf(path, sizeof(path), "/tmp/%s", name);
	for (;;) {
		pid_t pid = fork();
		if (pid == 0) {
			execl(path, name, "noop", (char *)NULL);
			_exit(127);
		}
		if (pid > 0)
			waitpid(pid, NULL, 0);
		sleep_ms(200);
	}
}

// syscall-latency, runq-latency and wakeups: short sleeps (each a wakeup, a run-queue wait and a syscall).
static void sleeps(const char *name, int port)
{
	(void)name;
	(void)port;
	for (;;) {
		sleep_ms(5);
		getppid();
	}
}

// cpu-profile: 30 ms of work in every 100 ms.
static void burns(const char *name, int port)
{
	(void)name;
	(void)port;
	volatile unsigned long x = 0;
	for (;;) {
		struct timespec a, b;
		clock_gettime(CLOCK_MONOTONIC, &a);
		do {
			for (int i = 0; i < 10000; i++)
				x += i;
			clock_gettime(CLOCK_MONOTONIC, &b);
		} while ((b.tv_sec - a.tv_sec) * 1000 + (b.tv_nsec - a.tv_nsec) / 1000000 < 30);
		sleep_ms(70);
	}
}

// tcp-connect: a connect that completes, 5 per second.
static void connects(const char *name, int port)
{
	(void)name;
	int l = listener(port, 16);
	for (;;) {
		int c = connecting(port, 0);
		int s = accept(l, NULL, NULL);
		if (c >= 0)
			close(c);
		if (s >= 0)
			close(s);
		sleep_ms(200);
	}
}

// tcp-retransmit: nothing accepts, so after the first connection fills the accept queue (backlog 0 holds one)
// the listener drops every SYN and the connecting sockets retransmit theirs. Up to 8 connects are pending.
static void retransmits(const char *name, int port)
{
	(void)name;
	int l = listener(port + 1, 0), fds[8], n = 0;
	(void)l;
	memset(fds, -1, sizeof(fds));
	for (;;) {
		if (fds[n % 8] >= 0)
			close(fds[n % 8]);
		fds[n % 8] = connecting(port + 1, SOCK_NONBLOCK);
		n++;
		sleep_ms(1000);
	}
}

// oom-kill: a child allocates and touches 64 MiB; the memory limit's OOM killer picks it.
static void allocates(const char *name, int port)
{
	(void)name;
	(void)port;
	for (;;) {
		pid_t pid = fork();
		if (pid == 0) {
			// Touched through a volatile pointer: a compiler may drop a malloc+memset whose memory is never
			// read.
			size_t size = 64 << 20;
			volatile char *p = malloc(size);
			for (size_t i = 0; p && i < size; i += 4096)
				p[i] = 1;
			_exit(0);
		}
		if (pid > 0)
			waitpid(pid, NULL, 0);
		sleep_ms(2000);
	}
}

int main(int argc, char **argv)
{
	if (argc == 2 && !strcmp(argv[1], "noop"))
		return 0;
	if (argc != 3) {
		fprintf(stderr, "usage: workload NAME PORT | workload oom NAME\n");
		return 2;
	}
	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);
	signal(SIGPIPE, SIG_IGN);
	int oom = !strcmp(argv[1], "oom");
	const char *name = oom ? argv[2] : argv[1];
	if (strlen(name) > 15 || strchr(name, '/')) {
		fprintf(stderr, "NAME must be a comm: at most 15 characters, no '/'\n");
		return 2;
	}
	prctl(PR_SET_NAME, name);
	if (oom) {
		child(allocates, name, 0);
	} else {
		int port = atoi(argv[2]);
		if (port <= 0 || port > 65534) {
			fprintf(stderr, "PORT must be 1-65534\n");
			return 2;
		}
		char path[64], self[256];
		ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
		if (n < 0)
			die("readlink /proc/self/exe");
		self[n] = 0;
		snprintf(path, sizeof(path), "/tmp/%s", name);
		unlink(path);
		if (symlink(self, path))
			die("symlink");
		child(execs, name, port);
		child(sleeps, name, port);
		child(burns, name, port);
		child(connects, name, port);
		child(retransmits, name, port);
	}
	for (;;)
		if (wait(NULL) < 0 && errno == ECHILD)
			return 1;
}
