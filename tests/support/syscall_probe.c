/* syscall_probe: make a few raw system calls and print what each returned, one per line:
 * NAME=ok, or NAME=ERRNO (the number) when it failed. Built static by the seccomp tests and run
 * in containers, to compare what the filter lets through.
 *
 * Each probe is chosen so that the kernel itself would answer differently from the filter:
 * vmsplice on a bad fd is EBADF unless the filter says EPERM; add_key is not in
 * containers-common's allow list (its default action: ENOSYS); personality is allowed only
 * for a few arguments; socket(AF_NETLINK, SOCK_RAW, NETLINK_AUDIT) is refused (EINVAL) only
 * without CAP_AUDIT_WRITE.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <sys/personality.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/netlink.h>

static void report(const char *name, long result)
{
    if (result < 0)
        printf("%s=%d\n", name, errno);
    else
        printf("%s=ok\n", name);
}

int main(void)
{
    report("getpid", syscall(SYS_getpid));
    report("vmsplice", syscall(SYS_vmsplice, -1, NULL, 0, 0));
    report("add_key", syscall(SYS_add_key, "user", "quay-probe", "x", 1, -2 /* process keyring */));
    report("personality_query", syscall(SYS_personality, 0xffffffffUL));
    report("personality_linux", syscall(SYS_personality, 0UL));
    report("personality_no_randomize", syscall(SYS_personality, (unsigned long) ADDR_NO_RANDOMIZE));
    report("socket_inet", syscall(SYS_socket, AF_INET, SOCK_DGRAM, 0));
    report("socket_netlink_route", syscall(SYS_socket, AF_NETLINK, SOCK_RAW, NETLINK_ROUTE));
    report("socket_netlink_audit", syscall(SYS_socket, AF_NETLINK, SOCK_RAW, NETLINK_AUDIT));
    report("kcmp", syscall(SYS_kcmp, getpid(), getpid(), 0 /* KCMP_FILE */, 0, 0));
    fflush(stdout);
    return 0;
}
