/* Fault injection for tests/test_reliability.py: LD_PRELOAD this library and the libc write and sync
 * calls of any process (Python, numpy, matplotlib, LMDB, Caffe's C++ snapshots, its forked children)
 * fail with an errno on files whose path contains OLMP_FAULT_PATH.
 *
 *   OLMP_FAULT_PATH   substring of the open file's path (/proc/self/fd/N); unset: nothing fails
 *   OLMP_FAULT_ERRNO  the errno to fail with (default 5, EIO)
 *   OLMP_FAULT_AT     "sync": only fsync/fdatasync fail (a disk whose errors show at writeback, as
 *                     EIO usually does); "write" (default): writes fail too, at the first byte
 *
 * Real device-mapper error targets are not available everywhere (containers); this gives the same
 * errno at the same libc calls the kernel would fail, for exactly the file a test names.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static int fault(int fd, int is_write) {
    const char *match = getenv("OLMP_FAULT_PATH");
    if (match == NULL || *match == '\0')
        return 0;
    const char *at = getenv("OLMP_FAULT_AT");
    if (is_write && at != NULL && strcmp(at, "sync") == 0)
        return 0;
    char link[64], path[4096];
    int saved = errno;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    errno = saved;
    if (n <= 0)
        return 0;
    path[n] = '\0';
    if (strstr(path, match) == NULL)
        return 0;
    const char *code = getenv("OLMP_FAULT_ERRNO");
    errno = code != NULL ? atoi(code) : EIO;
    return 1;
}

#define REAL(name) static __typeof__(name) *real; if (real == NULL) real = dlsym(RTLD_NEXT, #name)

ssize_t write(int fd, const void *buf, size_t n) {
    REAL(write);
    return fault(fd, 1) ? -1 : real(fd, buf, n);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
    REAL(pwrite);
    return fault(fd, 1) ? -1 : real(fd, buf, n, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off) {
    REAL(pwrite64);
    return fault(fd, 1) ? -1 : real(fd, buf, n, off);
}

ssize_t writev(int fd, const struct iovec *iov, int cnt) {
    REAL(writev);
    return fault(fd, 1) ? -1 : real(fd, iov, cnt);
}

ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off) {
    REAL(pwritev);
    return fault(fd, 1) ? -1 : real(fd, iov, cnt, off);
}

ssize_t sendfile(int out, int in, off_t *off, size_t n) {
    REAL(sendfile);
    return fault(out, 1) ? -1 : real(out, in, off, n);
}

ssize_t copy_file_range(int in, off_t *in_off, int out, off_t *out_off, size_t n, unsigned int flags) {
    REAL(copy_file_range);
    return fault(out, 1) ? -1 : real(in, in_off, out, out_off, n, flags);
}

ssize_t sendfile64(int out, int in, off64_t *off, size_t n) {
    REAL(sendfile64);
    return fault(out, 1) ? -1 : real(out, in, off, n);
}

ssize_t pwritev64(int fd, const struct iovec *iov, int cnt, off64_t off) {
    REAL(pwritev64);
    return fault(fd, 1) ? -1 : real(fd, iov, cnt, off);
}

ssize_t pwritev2(int fd, const struct iovec *iov, int cnt, off_t off, int flags) {
    REAL(pwritev2);
    return fault(fd, 1) ? -1 : real(fd, iov, cnt, off, flags);
}

int fsync(int fd) {
    REAL(fsync);
    return fault(fd, 0) ? -1 : real(fd);
}

int fdatasync(int fd) {
    REAL(fdatasync);
    return fault(fd, 0) ? -1 : real(fd);
}
