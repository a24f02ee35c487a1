/*
 * Test-only LD_PRELOAD shim for the power-loss test (tests/cli/power_loss.rs), compiled by the
 * test with gcc. It models what a disk has made durable: for every file in one watched folder
 * (HOARD_DURABLE_DIR), a copy of the file as it was when fsync or fdatasync last succeeded on it,
 * and, for the folder itself, the list of names it held when it was last fsynced. The copies go
 * to HOARD_DURABLE_SHADOW; after kill -9 the test rebuilds the folder from them (plus, in its
 * "torn" mode, a random subset of the later writes, page by page).
 *
 * Invariant: a shadow copy is replaced only after the real fsync succeeded, by rename(2), so a
 * writer killed at any instant leaves either the previous durable state or the new one, never a
 * half-written copy. Writes themselves pass through untouched: the page cache stays what the
 * killed process left, which is exactly what the test compares the durable state with.
 *
 * What it refuses: a file in the watched folder opened with O_SYNC or O_DSYNC (each write would
 * be durable at once, which this model does not track) makes the process abort with a message,
 * so the test can never pass on a model that does not fit the writer.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

static pthread_mutex_t shadow_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *watched_dir(void) { return getenv("HOARD_DURABLE_DIR"); }
static const char *shadow_dir(void) { return getenv("HOARD_DURABLE_SHADOW"); }

/* The path an open descriptor names, or "" when it cannot be told. */
static void fd_path(int fd, char *path, size_t size) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t length = readlink(link, path, size - 1);
    path[length < 0 ? 0 : length] = '\0';
}

/* The name of `path` inside the watched folder, or NULL when it is elsewhere. Returns "" for
 * the folder itself. */
static const char *watched_name(const char *path) {
    const char *dir = watched_dir();
    if (dir == NULL || shadow_dir() == NULL) return NULL;
    size_t dir_length = strlen(dir);
    if (strncmp(path, dir, dir_length) != 0) return NULL;
    if (path[dir_length] == '\0') return "";
    if (path[dir_length] != '/' || strchr(path + dir_length + 1, '/') != NULL) return NULL;
    return path + dir_length + 1;
}

static void die(const char *what, const char *name) {
    fprintf(stderr, "durable_shim: %s %s: %s\n", what, name, strerror(errno));
    abort();
}

/* Copies the file at `path` to `<shadow>/.<name>.pending`: the snapshot fsync is about to make
 * durable. */
static void copy_pending(const char *path, const char *name) {
    char pending[PATH_MAX];
    snprintf(pending, sizeof pending, "%s/.%s.pending", shadow_dir(), name);
    int source = open(path, O_RDONLY | O_CLOEXEC);
    if (source < 0) die("cannot read", path);
    int target = open(pending, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (target < 0) die("cannot write", pending);
    char buffer[1 << 16];
    for (;;) {
        ssize_t got = read(source, buffer, sizeof buffer);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) die("cannot read", path);
        if (got == 0) break;
        for (ssize_t done = 0; done < got;) {
            ssize_t put = write(target, buffer + done, (size_t)(got - done));
            if (put < 0 && errno == EINTR) continue;
            if (put < 0) die("cannot write", pending);
            done += put;
        }
    }
    close(source);
    close(target);
}

/* Writes the folder's names to `<shadow>/.manifest.pending`. */
static void list_pending(const char *dir) {
    char pending[PATH_MAX];
    snprintf(pending, sizeof pending, "%s/.manifest.pending", shadow_dir());
    FILE *out = fopen(pending, "we");
    if (out == NULL) die("cannot write", pending);
    DIR *listing = opendir(dir);
    if (listing == NULL) die("cannot list", dir);
    struct dirent *entry;
    while ((entry = readdir(listing)) != NULL) {
        if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0) continue;
        fprintf(out, "%s\n", entry->d_name);
    }
    closedir(listing);
    fclose(out);
}

/* Makes the pending snapshot of `name` ("" for the folder's manifest) the durable one, and
 * appends the name to `<shadow>/.syncs` (the test's count of each file's flushes). */
static void commit_pending(const char *name, int keep) {
    char pending[PATH_MAX], durable[PATH_MAX], syncs[PATH_MAX];
    const char *base = name[0] == '\0' ? "manifest" : name;
    snprintf(pending, sizeof pending, "%s/.%s.pending", shadow_dir(), base);
    snprintf(durable, sizeof durable, "%s/%s%s", shadow_dir(), name[0] == '\0' ? "." : "", base);
    if (!keep) {
        unlink(pending);
        return;
    }
    if (rename(pending, durable) != 0) die("cannot rename", pending);
    snprintf(syncs, sizeof syncs, "%s/.syncs", shadow_dir());
    int log = open(syncs, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (log < 0) die("cannot write", syncs);
    char line[PATH_MAX + 2];
    int length = snprintf(line, sizeof line, "%s\n", name[0] == '\0' ? "(folder)" : name);
    if (write(log, line, (size_t)length) != length) die("cannot write", syncs);
    close(log);
}

typedef int (*sync_function)(int);

static int synced(int fd, sync_function real) {
    char path[PATH_MAX];
    fd_path(fd, path, sizeof path);
    const char *name = watched_name(path);
    if (name == NULL) return real(fd);
    pthread_mutex_lock(&shadow_lock);
    int saved_errno = errno;
    if (name[0] == '\0') {
        list_pending(path);
    } else {
        copy_pending(path, name);
    }
    errno = saved_errno;
    int result = real(fd);
    saved_errno = errno;
    commit_pending(name, result == 0);
    pthread_mutex_unlock(&shadow_lock);
    errno = saved_errno;
    return result;
}

int fsync(int fd) {
    static sync_function real = NULL;
    if (real == NULL) real = (sync_function)dlsym(RTLD_NEXT, "fsync");
    return synced(fd, real);
}

int fdatasync(int fd) {
    static sync_function real = NULL;
    if (real == NULL) real = (sync_function)dlsym(RTLD_NEXT, "fdatasync");
    return synced(fd, real);
}

/* Everything in the folder becomes durable, names and contents. */
static void sync_everything(void) {
    const char *dir = watched_dir();
    if (dir == NULL || shadow_dir() == NULL) return;
    pthread_mutex_lock(&shadow_lock);
    list_pending(dir);
    commit_pending("", 1);
    DIR *listing = opendir(dir);
    if (listing != NULL) {
        struct dirent *entry;
        while ((entry = readdir(listing)) != NULL) {
            if (entry->d_name[0] == '.') continue;
            char path[PATH_MAX];
            snprintf(path, sizeof path, "%s/%s", dir, entry->d_name);
            copy_pending(path, entry->d_name);
            commit_pending(entry->d_name, 1);
        }
        closedir(listing);
    }
    pthread_mutex_unlock(&shadow_lock);
}

void sync(void) {
    static void (*real)(void) = NULL;
    if (real == NULL) real = (void (*)(void))dlsym(RTLD_NEXT, "sync");
    real();
    sync_everything();
}

int syncfs(int fd) {
    static sync_function real = NULL;
    if (real == NULL) real = (sync_function)dlsym(RTLD_NEXT, "syncfs");
    int result = real(fd);
    if (result == 0) sync_everything();
    return result;
}

/* Refuses synchronous-write opens of watched files (see the header comment). */
static void check_open(int dirfd, const char *path, int flags) {
    if ((flags & (O_SYNC | O_DSYNC)) == 0 || path == NULL) return;
    char full[2 * PATH_MAX + 2];
    if (path[0] == '/' || dirfd == AT_FDCWD) {
        if (realpath(path, full) == NULL) snprintf(full, sizeof full, "%s", path);
    } else {
        char dir[PATH_MAX];
        fd_path(dirfd, dir, sizeof dir);
        snprintf(full, sizeof full, "%s/%s", dir, path);
    }
    if (watched_name(full) != NULL) {
        fprintf(stderr, "durable_shim: %s opened with O_SYNC/O_DSYNC, which this disk model does not track\n", full);
        abort();
    }
}

typedef int (*open_function)(const char *, int, ...);
typedef int (*openat_function)(int, const char *, int, ...);

/* The optional third argument of open(2): the mode, given only with O_CREAT or O_TMPFILE. */
#define MODE_ARGUMENT(flags, mode)                                                   \
    mode_t mode = 0;                                                                  \
    if ((flags) & (O_CREAT | O_TMPFILE)) {                                            \
        va_list arguments;                                                            \
        va_start(arguments, flags);                                                   \
        mode = (mode_t)va_arg(arguments, int);                                        \
        va_end(arguments);                                                            \
    }

#define OPEN_WRAPPER(symbol)                                                          \
    int symbol(const char *path, int flags, ...) {                                     \
        static open_function real = NULL;                                              \
        if (real == NULL) real = (open_function)dlsym(RTLD_NEXT, #symbol);             \
        MODE_ARGUMENT(flags, mode)                                                     \
        check_open(AT_FDCWD, path, flags);                                             \
        return real(path, flags, mode);                                                \
    }

#define OPENAT_WRAPPER(symbol)                                                        \
    int symbol(int dirfd, const char *path, int flags, ...) {                          \
        static openat_function real = NULL;                                            \
        if (real == NULL) real = (openat_function)dlsym(RTLD_NEXT, #symbol);           \
        MODE_ARGUMENT(flags, mode)                                                     \
        check_open(dirfd, path, flags);                                                \
        return real(dirfd, path, flags, mode);                                         \
    }

OPEN_WRAPPER(open)
OPEN_WRAPPER(open64)
OPENAT_WRAPPER(openat)
OPENAT_WRAPPER(openat64)
