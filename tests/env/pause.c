/*
 * The Pod sandbox ("pause") process of the test node, built by tests/env/install with gcc -static and
 * packed into the image that containerd's sandbox_image names (kacme-testenv writes that image; nothing is
 * pulled from a registry). It does what Kubernetes' build/pause/linux/pause.c does: hold the Pod's
 * namespaces open, reap orphaned children (it is PID 1 when the Pod shares its process namespace), and
 * exit 0 on SIGINT or SIGTERM.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define VERSION "kacme-testenv pause 1"

static void exit_on_signal(int signo) {
	(void)signo;
	_exit(0);
}

static void reap_children(int signo) {
	(void)signo;
	while (waitpid(-1, NULL, WNOHANG) > 0) {
	}
}

int main(int argc, char **argv) {
	if (argc > 1 && (strcmp(argv[1], "-v") == 0 || strcmp(argv[1], "--version") == 0)) {
		printf("%s\n", VERSION);
		return 0;
	}
	if (getpid() != 1) {
		fprintf(stderr, "pause: warning: not running as PID 1\n");
	}
	struct sigaction exit_action = {.sa_handler = exit_on_signal};
	struct sigaction reap_action = {.sa_handler = reap_children, .sa_flags = SA_NOCLDSTOP};
	if (sigaction(SIGINT, &exit_action, NULL) < 0 || sigaction(SIGTERM, &exit_action, NULL) < 0 ||
	    sigaction(SIGCHLD, &reap_action, NULL) < 0) {
		perror("pause: sigaction");
		return 1;
	}
	for (;;) {
		pause();
	}
	return 42;
}
