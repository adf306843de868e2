/*
 * iolog: an LD_PRELOAD interposer that records the file operations a process makes under one
 * directory (its own and those of every library it links, RocksDB included), for the power-loss
 * harness (engine/tests/powerloss.rs), and cuts the power at a chosen operation.
 *
 * Environment:
 *   SIREN_IOLOG       file to append the records to
 *   SIREN_IOLOG_ROOT  absolute directory whose files are recorded
 *   SIREN_IOLOG_CUT   kill the process (SIGKILL) just before recorded operation number N (1-based)
 *
 * `iolog_cut_now()` kills the process the same way at a moment of the caller's choosing.
 *
 * Every recorded operation runs and is logged under one lock, so the log is the order in which
 * they happened. Only operations that succeeded are logged. A write to a file under the root that
 * this interposer cannot model (an fd it did not see opened, a shared writable mapping,
 * copy_file_range, sendfile) aborts the process with a message: the harness must not silently
 * miss a write.
 *
 * Record: u8 kind, i32 fd, i64 a, i64 b, u32 len1, u32 len2, then len1 + len2 bytes
 * (a path or data, then a second path). Little-endian, packed.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

enum {
    K_OPEN = 1, K_WRITE = 2, K_SYNC = 3, K_FTRUNCATE = 4, K_TRUNCATE = 5, K_RENAME = 6,
    K_UNLINK = 7, K_MKDIR = 8, K_RMDIR = 9, K_CLOSE = 10, K_DUP = 11, K_SYNCALL = 12,
    K_FALLOCATE = 13, K_LINK = 14,
};

#define MAX_FD 65536
static pthread_mutex_t lock = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;
static char *fd_path[MAX_FD]; /* tracked fds: the path they were opened with */
static int log_fd = -1;
static char root[PATH_MAX];
static size_t root_len;
static long long cut_at, ops;
static int ready;

#define REAL(ret, name, args) \
    static ret(*real_##name) args; \
    if (!real_##name) real_##name = (ret(*) args)dlsym(RTLD_NEXT, #name);

static ssize_t raw_write(int fd, const void *buf, size_t n) {
    static ssize_t (*w)(int, const void *, size_t);
    if (!w) w = (ssize_t(*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
    const char *p = buf;
    while (n > 0) {
        ssize_t k = w(fd, p, n);
        if (k < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

__attribute__((constructor)) static void init(void) {
    const char *log = getenv("SIREN_IOLOG"), *r = getenv("SIREN_IOLOG_ROOT");
    const char *cut = getenv("SIREN_IOLOG_CUT");
    if (!log || !r) return;
    static int (*o)(const char *, int, ...);
    if (!o) o = (int (*)(const char *, int, ...))dlsym(RTLD_NEXT, "open");
    log_fd = o(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log_fd < 0) { perror("iolog: open the log"); abort(); }
    snprintf(root, sizeof root, "%s", r);
    root_len = strlen(root);
    cut_at = cut ? atoll(cut) : 0;
    ready = 1;
}

/* Cut the power now, after the last operation: the child calls this at the end of its work.
 * Under the lock, so that no recorded operation is in flight on another thread and the log is
 * exactly what the directory holds. */
void iolog_cut_now(void) {
    pthread_mutex_lock(&lock);
    kill(getpid(), SIGKILL);
}

static int under_root(const char *p) {
    return ready && strncmp(p, root, root_len) == 0 && (p[root_len] == 0 || p[root_len] == '/');
}

/* An absolute path for `p` relative to `dirfd`. */
static void absolute(int dirfd, const char *p, char *out) {
    if (p[0] == '/') { snprintf(out, PATH_MAX, "%s", p); return; }
    char base[PATH_MAX];
    if (dirfd == AT_FDCWD) {
        if (!getcwd(base, sizeof base)) base[0] = 0;
    } else if (dirfd >= 0 && dirfd < MAX_FD && fd_path[dirfd]) {
        snprintf(base, sizeof base, "%s", fd_path[dirfd]);
    } else {
        char link[64];
        snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd);
        ssize_t n = readlink(link, base, sizeof base - 1);
        base[n > 0 ? n : 0] = 0;
    }
    snprintf(out, PATH_MAX, "%s/%s", base, p);
}

/* Count an operation about to run; cut the power at the chosen one. Called with the lock held. */
static void tick(void) {
    ops++;
    if (cut_at && ops == cut_at) kill(getpid(), SIGKILL);
}

static void emit(uint8_t kind, int fd, int64_t a, int64_t b, const void *p1, uint32_t l1,
                 const void *p2, uint32_t l2) {
    unsigned char head[1 + 4 + 8 + 8 + 4 + 4];
    size_t o = 0;
    head[o++] = kind;
    memcpy(head + o, &fd, 4); o += 4;
    memcpy(head + o, &a, 8); o += 8;
    memcpy(head + o, &b, 8); o += 8;
    memcpy(head + o, &l1, 4); o += 4;
    memcpy(head + o, &l2, 4); o += 4;
    size_t total = o + l1 + l2;
    unsigned char *buf = malloc(total);
    if (!buf) abort();
    memcpy(buf, head, o);
    if (l1) memcpy(buf + o, p1, l1);
    if (l2) memcpy(buf + o + l1, p2, l2);
    if (raw_write(log_fd, buf, total) != 0) { perror("iolog: write the log"); abort(); }
    free(buf);
}

static int tracked(int fd) { return ready && fd >= 0 && fd < MAX_FD && fd_path[fd]; }

/* A write to an fd this interposer does not track must not be a file under the root. */
static void check_untracked(int fd, const char *what) {
    if (!ready || tracked(fd)) return;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return;
    char link[64], target[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n <= 0) return;
    target[n] = 0;
    if (under_root(target)) {
        fprintf(stderr, "iolog: %s to %s through an fd opened unseen: not modelled\n", what, target);
        abort();
    }
}

static int do_open(int dirfd, const char *path, int flags, mode_t mode, int at) {
    REAL(int, openat, (int, const char *, int, ...));
    char abs[PATH_MAX];
    absolute(dirfd, path, abs);
    if (!under_root(abs)) return at ? real_openat(dirfd, path, flags, mode) : real_openat(AT_FDCWD, path, flags, mode);
    pthread_mutex_lock(&lock);
    tick();
    int fd = real_openat(dirfd, path, flags, mode);
    if (fd >= 0 && fd < MAX_FD) {
        free(fd_path[fd]);
        fd_path[fd] = strdup(abs);
        emit(K_OPEN, fd, flags, 0, abs, (uint32_t)strlen(abs), NULL, 0);
    }
    pthread_mutex_unlock(&lock);
    return fd;
}

#define MODE_ARG(flags) \
    mode_t mode = 0; \
    if ((flags) & (O_CREAT | O_TMPFILE)) { va_list ap; va_start(ap, flags); mode = va_arg(ap, int); va_end(ap); }

int open(const char *p, int flags, ...) { MODE_ARG(flags); return do_open(AT_FDCWD, p, flags, mode, 0); }
int open64(const char *p, int flags, ...) { MODE_ARG(flags); return do_open(AT_FDCWD, p, flags, mode, 0); }
int openat(int d, const char *p, int flags, ...) { MODE_ARG(flags); return do_open(d, p, flags, mode, 1); }
int openat64(int d, const char *p, int flags, ...) { MODE_ARG(flags); return do_open(d, p, flags, mode, 1); }
int __open_2(const char *p, int flags) { return do_open(AT_FDCWD, p, flags, 0, 0); }
int __open64_2(const char *p, int flags) { return do_open(AT_FDCWD, p, flags, 0, 0); }
int __openat_2(int d, const char *p, int flags) { return do_open(d, p, flags, 0, 1); }
int __openat64_2(int d, const char *p, int flags) { return do_open(d, p, flags, 0, 1); }
int creat(const char *p, mode_t m) { return do_open(AT_FDCWD, p, O_CREAT | O_WRONLY | O_TRUNC, m, 0); }
int creat64(const char *p, mode_t m) { return do_open(AT_FDCWD, p, O_CREAT | O_WRONLY | O_TRUNC, m, 0); }

/* Log a write of `n` bytes from `buf` made at `off` (-1: at the fd's position before the call). */
static ssize_t logged_write(int fd, const void *buf, size_t count, off_t off,
                            ssize_t (*perform)(int, const void *, size_t, off_t)) {
    if (!tracked(fd)) {
        check_untracked(fd, "a write");
        return perform(fd, buf, count, off);
    }
    pthread_mutex_lock(&lock);
    tick();
    off_t at = off;
    if (at < 0) {
        int fl = fcntl(fd, F_GETFL);
        struct stat st;
        if ((fl & O_APPEND) && fstat(fd, &st) == 0) at = st.st_size;
        else at = lseek(fd, 0, SEEK_CUR);
    }
    ssize_t n = perform(fd, buf, count, off);
    if (n > 0) emit(K_WRITE, fd, at, 0, buf, (uint32_t)n, NULL, 0);
    pthread_mutex_unlock(&lock);
    return n;
}

static ssize_t perform_write(int fd, const void *b, size_t n, off_t off) {
    (void)off;
    REAL(ssize_t, write, (int, const void *, size_t));
    return real_write(fd, b, n);
}
static ssize_t perform_pwrite(int fd, const void *b, size_t n, off_t off) {
    REAL(ssize_t, pwrite64, (int, const void *, size_t, off_t));
    return real_pwrite64(fd, b, n, off);
}

ssize_t write(int fd, const void *b, size_t n) { return logged_write(fd, b, n, -1, perform_write); }
ssize_t pwrite(int fd, const void *b, size_t n, off_t off) { return logged_write(fd, b, n, off, perform_pwrite); }
ssize_t pwrite64(int fd, const void *b, size_t n, off_t off) { return logged_write(fd, b, n, off, perform_pwrite); }

static ssize_t gathered(int fd, const struct iovec *iov, int cnt, off_t off) {
    size_t total = 0;
    for (int i = 0; i < cnt; i++) total += iov[i].iov_len;
    char *buf = malloc(total ? total : 1);
    if (!buf) abort();
    size_t o = 0;
    for (int i = 0; i < cnt; i++) { memcpy(buf + o, iov[i].iov_base, iov[i].iov_len); o += iov[i].iov_len; }
    ssize_t n = logged_write(fd, buf, total, off, off < 0 ? perform_write : perform_pwrite);
    free(buf);
    return n;
}

ssize_t writev(int fd, const struct iovec *iov, int cnt) {
    if (!tracked(fd)) {
        check_untracked(fd, "writev");
        REAL(ssize_t, writev, (int, const struct iovec *, int));
        return real_writev(fd, iov, cnt);
    }
    return gathered(fd, iov, cnt, -1);
}
ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off) {
    if (!tracked(fd)) {
        check_untracked(fd, "pwritev");
        REAL(ssize_t, pwritev, (int, const struct iovec *, int, off_t));
        return real_pwritev(fd, iov, cnt, off);
    }
    return gathered(fd, iov, cnt, off);
}
ssize_t pwritev64(int fd, const struct iovec *iov, int cnt, off_t off) { return pwritev(fd, iov, cnt, off); }

static int synced(int fd, int (*perform)(int)) {
    if (!tracked(fd)) return perform(fd);
    pthread_mutex_lock(&lock);
    tick();
    int r = perform(fd);
    if (r == 0) emit(K_SYNC, fd, 0, 0, NULL, 0, NULL, 0);
    pthread_mutex_unlock(&lock);
    return r;
}
static int perform_fsync(int fd) { REAL(int, fsync, (int)); return real_fsync(fd); }
static int perform_fdatasync(int fd) { REAL(int, fdatasync, (int)); return real_fdatasync(fd); }
int fsync(int fd) { return synced(fd, perform_fsync); }
int fdatasync(int fd) { return synced(fd, perform_fdatasync); }

void sync(void) {
    REAL(void, sync, (void));
    pthread_mutex_lock(&lock);
    tick();
    real_sync();
    if (ready) emit(K_SYNCALL, -1, 0, 0, NULL, 0, NULL, 0);
    pthread_mutex_unlock(&lock);
}
int syncfs(int fd) {
    REAL(int, syncfs, (int));
    pthread_mutex_lock(&lock);
    tick();
    int r = real_syncfs(fd);
    if (r == 0 && ready) emit(K_SYNCALL, -1, 0, 0, NULL, 0, NULL, 0);
    pthread_mutex_unlock(&lock);
    return r;
}

int ftruncate(int fd, off_t len) {
    REAL(int, ftruncate, (int, off_t));
    if (!tracked(fd)) return real_ftruncate(fd, len);
    pthread_mutex_lock(&lock);
    tick();
    int r = real_ftruncate(fd, len);
    if (r == 0) emit(K_FTRUNCATE, fd, len, 0, NULL, 0, NULL, 0);
    pthread_mutex_unlock(&lock);
    return r;
}
int ftruncate64(int fd, off_t len) { return ftruncate(fd, len); }

int fallocate(int fd, int mode, off_t off, off_t len) {
    REAL(int, fallocate, (int, int, off_t, off_t));
    if (!tracked(fd)) return real_fallocate(fd, mode, off, len);
    pthread_mutex_lock(&lock);
    tick();
    int r = real_fallocate(fd, mode, off, len);
    if (r == 0) emit(K_FALLOCATE, fd, off, len, &mode, 4, NULL, 0);
    pthread_mutex_unlock(&lock);
    return r;
}
int fallocate64(int fd, int mode, off_t off, off_t len) { return fallocate(fd, mode, off, len); }
int posix_fallocate(int fd, off_t off, off_t len) {
    REAL(int, posix_fallocate, (int, off_t, off_t));
    if (!tracked(fd)) return real_posix_fallocate(fd, off, len);
    pthread_mutex_lock(&lock);
    tick();
    int r = real_posix_fallocate(fd, off, len);
    int mode = 0;
    if (r == 0) emit(K_FALLOCATE, fd, off, len, &mode, 4, NULL, 0);
    pthread_mutex_unlock(&lock);
    return r;
}
int posix_fallocate64(int fd, off_t off, off_t len) { return posix_fallocate(fd, off, len); }

int close(int fd) {
    REAL(int, close, (int));
    if (!tracked(fd)) return real_close(fd);
    pthread_mutex_lock(&lock);
    int r = real_close(fd);
    emit(K_CLOSE, fd, 0, 0, NULL, 0, NULL, 0);
    free(fd_path[fd]);
    fd_path[fd] = NULL;
    pthread_mutex_unlock(&lock);
    return r;
}

static int duplicated(int old, int fd) {
    if (fd >= 0 && fd < MAX_FD && tracked(old)) {
        free(fd_path[fd]);
        fd_path[fd] = strdup(fd_path[old]);
        emit(K_DUP, fd, old, 0, NULL, 0, NULL, 0);
    }
    return fd;
}
int dup(int old) {
    REAL(int, dup, (int));
    pthread_mutex_lock(&lock);
    int fd = duplicated(old, real_dup(old));
    pthread_mutex_unlock(&lock);
    return fd;
}
int dup2(int old, int new_fd) {
    REAL(int, dup2, (int, int));
    if (tracked(new_fd)) { fprintf(stderr, "iolog: dup2 over a tracked fd\n"); abort(); }
    pthread_mutex_lock(&lock);
    int fd = duplicated(old, real_dup2(old, new_fd));
    pthread_mutex_unlock(&lock);
    return fd;
}
int dup3(int old, int new_fd, int flags) {
    REAL(int, dup3, (int, int, int));
    if (tracked(new_fd)) { fprintf(stderr, "iolog: dup3 over a tracked fd\n"); abort(); }
    pthread_mutex_lock(&lock);
    int fd = duplicated(old, real_dup3(old, new_fd, flags));
    pthread_mutex_unlock(&lock);
    return fd;
}
int fcntl(int fd, int cmd, ...) {
    REAL(int, fcntl, (int, int, ...));
    va_list ap;
    va_start(ap, cmd);
    long arg = va_arg(ap, long);
    va_end(ap);
    if ((cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC) && tracked(fd)) {
        pthread_mutex_lock(&lock);
        int r = duplicated(fd, real_fcntl(fd, cmd, arg));
        pthread_mutex_unlock(&lock);
        return r;
    }
    return real_fcntl(fd, cmd, arg);
}
int fcntl64(int fd, int cmd, ...) {
    va_list ap;
    va_start(ap, cmd);
    long arg = va_arg(ap, long);
    va_end(ap);
    return fcntl(fd, cmd, arg);
}

/* Path operations: record those whose path is under the root. */
static int path_op(uint8_t kind, int d1, const char *p1, int d2, const char *p2, int64_t a,
                   int (*perform)(int, const char *, int, const char *, int64_t)) {
    char abs1[PATH_MAX], abs2[PATH_MAX];
    absolute(d1, p1, abs1);
    if (p2) absolute(d2, p2, abs2);
    int watched = under_root(abs1) || (p2 && under_root(abs2));
    if (!watched) return perform(d1, p1, d2, p2, a);
    pthread_mutex_lock(&lock);
    tick();
    int r = perform(d1, p1, d2, p2, a);
    if (r == 0)
        emit(kind, -1, a, 0, abs1, (uint32_t)strlen(abs1), p2 ? abs2 : NULL,
             p2 ? (uint32_t)strlen(abs2) : 0);
    pthread_mutex_unlock(&lock);
    return r;
}

static int perform_renameat2(int d1, const char *p1, int d2, const char *p2, int64_t flags) {
    REAL(int, renameat2, (int, const char *, int, const char *, unsigned));
    return real_renameat2(d1, p1, d2, p2, (unsigned)flags);
}
int rename(const char *a, const char *b) { return path_op(K_RENAME, AT_FDCWD, a, AT_FDCWD, b, 0, perform_renameat2); }
int renameat(int d1, const char *a, int d2, const char *b) { return path_op(K_RENAME, d1, a, d2, b, 0, perform_renameat2); }
int renameat2(int d1, const char *a, int d2, const char *b, unsigned f) {
    if (f) { fprintf(stderr, "iolog: renameat2 flags %u not modelled\n", f); abort(); }
    return path_op(K_RENAME, d1, a, d2, b, 0, perform_renameat2);
}

static int perform_unlinkat(int d, const char *p, int d2, const char *p2, int64_t flags) {
    (void)d2; (void)p2;
    REAL(int, unlinkat, (int, const char *, int));
    return real_unlinkat(d, p, (int)flags);
}
int unlink(const char *p) { return path_op(K_UNLINK, AT_FDCWD, p, 0, NULL, 0, perform_unlinkat); }
int rmdir(const char *p) { return path_op(K_RMDIR, AT_FDCWD, p, 0, NULL, AT_REMOVEDIR, perform_unlinkat); }
int unlinkat(int d, const char *p, int flags) {
    return path_op(flags & AT_REMOVEDIR ? K_RMDIR : K_UNLINK, d, p, 0, NULL, flags, perform_unlinkat);
}

static int perform_mkdirat(int d, const char *p, int d2, const char *p2, int64_t mode) {
    (void)d2; (void)p2;
    REAL(int, mkdirat, (int, const char *, mode_t));
    return real_mkdirat(d, p, (mode_t)mode);
}
int mkdir(const char *p, mode_t m) { return path_op(K_MKDIR, AT_FDCWD, p, 0, NULL, m, perform_mkdirat); }
int mkdirat(int d, const char *p, mode_t m) { return path_op(K_MKDIR, d, p, 0, NULL, m, perform_mkdirat); }

static int perform_truncate(int d, const char *p, int d2, const char *p2, int64_t len) {
    (void)d; (void)d2; (void)p2;
    REAL(int, truncate, (const char *, off_t));
    return real_truncate(p, (off_t)len);
}
int truncate(const char *p, off_t len) { return path_op(K_TRUNCATE, AT_FDCWD, p, 0, NULL, len, perform_truncate); }
int truncate64(const char *p, off_t len) { return truncate(p, len); }

static int perform_linkat(int d1, const char *p1, int d2, const char *p2, int64_t flags) {
    REAL(int, linkat, (int, const char *, int, const char *, int));
    return real_linkat(d1, p1, d2, p2, (int)flags);
}
int link(const char *a, const char *b) { return path_op(K_LINK, AT_FDCWD, a, AT_FDCWD, b, 0, perform_linkat); }
int linkat(int d1, const char *a, int d2, const char *b, int f) { return path_op(K_LINK, d1, a, d2, b, f, perform_linkat); }

/* What the model cannot follow, refused loudly. */
void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    REAL(void *, mmap, (void *, size_t, int, int, int, off_t));
    if (tracked(fd) && (prot & PROT_WRITE) && (flags & MAP_SHARED)) {
        fprintf(stderr, "iolog: shared writable mapping of %s: not modelled\n", fd_path[fd]);
        abort();
    }
    return real_mmap(addr, len, prot, flags, fd, off);
}
void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    return mmap(addr, len, prot, flags, fd, off);
}
ssize_t copy_file_range(int in, loff_t *oin, int out, loff_t *oout, size_t len, unsigned fl) {
    REAL(ssize_t, copy_file_range, (int, loff_t *, int, loff_t *, size_t, unsigned));
    check_untracked(out, "copy_file_range");
    if (tracked(out)) { fprintf(stderr, "iolog: copy_file_range into %s: not modelled\n", fd_path[out]); abort(); }
    return real_copy_file_range(in, oin, out, oout, len, fl);
}
ssize_t sendfile(int out, int in, off_t *off, size_t n) {
    REAL(ssize_t, sendfile, (int, int, off_t *, size_t));
    check_untracked(out, "sendfile");
    if (tracked(out)) { fprintf(stderr, "iolog: sendfile into %s: not modelled\n", fd_path[out]); abort(); }
    return real_sendfile(out, in, off, n);
}
ssize_t sendfile64(int out, int in, off_t *off, size_t n) { return sendfile(out, in, off, n); }
