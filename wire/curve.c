/* CURVE keys and socket setup. Keys live as Z85 text files: dir/name.pub (0644, shareable) and
 * dir/name.key (0400). A secret file that group or others can read is refused at load, like
 * ssh does, because a leaked node key lets anyone pose as that node. Files are created with
 * O_EXCL, so a key pair is never overwritten by accident. Which clients a server accepts is
 * the ZAP handler's business (wire/zap.c), not this file's. */
#include "wire/wire.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#define Z85_KEY_LEN 40

static int key_path(char *out, size_t n, const char *dir, const char *name, const char *ext)
{
    int len = snprintf(out, n, "%s/%s.%s", dir, name, ext);
    return len < 0 || (size_t)len >= n ? -ENAMETOOLONG : 0;
}

/* Creates path (which must not exist) with mode and writes z85 and a newline. */
static int write_key(const char *path, const char *z85, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0) return -errno;
    char line[Z85_KEY_LEN + 1];
    memcpy(line, z85, Z85_KEY_LEN);
    line[Z85_KEY_LEN] = '\n';
    ssize_t w = write(fd, line, sizeof(line));
    int err = w == (ssize_t)sizeof(line) ? 0 : w < 0 ? -errno : -EIO;
    if (close(fd) != 0 && !err) err = -errno;
    explicit_bzero(line, sizeof(line));
    return err;
}

int wire_curve_keygen(const char *dir, const char *name)
{
    char pub_path[4096], key_path_[4096];
    int err = key_path(pub_path, sizeof(pub_path), dir, name, "pub");
    if (!err) err = key_path(key_path_, sizeof(key_path_), dir, name, "key");
    if (err) return err;
    char pub[Z85_KEY_LEN + 1], sec[Z85_KEY_LEN + 1];
    if (zmq_curve_keypair(pub, sec) != 0) return -zmq_errno(); /* ENOTSUP without CURVE */
    /* The secret first: if the public file then cannot be made, the secret is removed, and a
     * half pair never stays behind. */
    err = write_key(key_path_, sec, 0400);
    explicit_bzero(sec, sizeof(sec));
    if (err) return err;
    err = write_key(pub_path, pub, 0644);
    if (err) unlink(key_path_);
    return err;
}

/* Reads one Z85 key from path into out (41 bytes). */
static int read_key(const char *path, bool secret, char *out)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    if (secret && (st.st_mode & 077)) {
        close(fd);
        return -EPERM;
    }
    char buf[Z85_KEY_LEN + 8];
    ssize_t n = read(fd, buf, sizeof(buf));
    close(fd);
    int err = 0;
    /* Exactly 40 characters, optionally followed by line-end whitespace. */
    if (n < Z85_KEY_LEN) err = n < 0 ? -errno : -EINVAL;
    for (ssize_t i = Z85_KEY_LEN; !err && i < n; i++)
        if (buf[i] != '\n' && buf[i] != '\r' && buf[i] != ' ') err = -EINVAL;
    uint8_t bin[32];
    if (!err) {
        buf[Z85_KEY_LEN] = '\0';
        if (!zmq_z85_decode(bin, buf)) err = -EINVAL;
    }
    if (!err) memcpy(out, buf, Z85_KEY_LEN + 1);
    explicit_bzero(buf, sizeof(buf));
    explicit_bzero(bin, sizeof(bin));
    return err;
}

int wire_curve_load(const char *dir, const char *name, bool with_secret, wire_keypair_t *kp)
{
    memset(kp, 0, sizeof(*kp));
    char path[4096];
    int err = key_path(path, sizeof(path), dir, name, "pub");
    if (!err) err = read_key(path, false, kp->public_z85);
    if (!err && with_secret) err = key_path(path, sizeof(path), dir, name, "key");
    if (!err && with_secret) err = read_key(path, true, kp->secret_z85);
    if (err) wire_keypair_wipe(kp);
    return err;
}

int wire_curve_server_setup(void *sock, const wire_keypair_t *kp)
{
    if (strlen(kp->secret_z85) != Z85_KEY_LEN) return -EINVAL;
    int one = 1;
    /* A ZAP domain makes libzmq consult the handler for this socket's handshakes. */
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVER, &one, sizeof(one)) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, kp->secret_z85, Z85_KEY_LEN + 1) != 0 ||
        zmq_setsockopt(sock, ZMQ_ZAP_DOMAIN, "moemesh", 7) != 0)
        return -zmq_errno();
    return 0;
}

int wire_curve_client_setup(void *sock, const wire_keypair_t *kp, const char *server_public_z85)
{
    if (strlen(kp->secret_z85) != Z85_KEY_LEN || strlen(kp->public_z85) != Z85_KEY_LEN ||
        strlen(server_public_z85) != Z85_KEY_LEN)
        return -EINVAL;
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, server_public_z85, Z85_KEY_LEN + 1) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, kp->public_z85, Z85_KEY_LEN + 1) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, kp->secret_z85, Z85_KEY_LEN + 1) != 0)
        return -zmq_errno();
    return 0;
}

void wire_keypair_wipe(wire_keypair_t *kp)
{
    explicit_bzero(kp->secret_z85, sizeof(kp->secret_z85));
}
