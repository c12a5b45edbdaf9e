/* sd_notify MESSAGE [PROGRAM [ARG...]]: a static test helper (never committed as a binary).
 *
 * Sends MESSAGE as one datagram to $NOTIFY_SOCKET (a path, or an abstract name written "@name"),
 * then, when PROGRAM is given, execs it: a container's init can send and stay the same process.
 * Build: gcc -static -O2 -o sd_notify tests/support/sd_notify.c */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int main(int argc, char **argv) {
    const char *path = getenv("NOTIFY_SOCKET");
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (argc < 2 || path == NULL || path[0] == '\0') {
        fprintf(stderr, "usage: NOTIFY_SOCKET=PATH sd_notify MESSAGE [PROGRAM [ARG...]]\n");
        return 2;
    }
    size_t n = strlen(path);
    if (n >= sizeof addr.sun_path) {
        fprintf(stderr, "sd_notify: NOTIFY_SOCKET is too long\n");
        return 2;
    }
    memcpy(addr.sun_path, path, n);
    int abstract = path[0] == '@';
    if (abstract) addr.sun_path[0] = '\0'; /* the name is the bytes after the NUL, no terminator */
    socklen_t len = offsetof(struct sockaddr_un, sun_path) + n + (abstract ? 0 : 1);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || sendto(fd, argv[1], strlen(argv[1]), 0, (struct sockaddr *)&addr, len) < 0) {
        perror("sd_notify");
        return 1;
    }
    close(fd);
    if (argc > 2) {
        execv(argv[2], argv + 2);
        perror(argv[2]);
        return 127;
    }
    return 0;
}
