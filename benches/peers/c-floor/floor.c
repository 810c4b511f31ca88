/*
 * The floor: the least an HTTP/1.1 server on epoll can do per request.
 * One thread, level-triggered epoll, non-blocking sockets; every request
 * (a head ending in an empty line, no body) is answered with the same canned
 * response, written with one write per batch of pipelined requests. It
 * parses nothing and checks nothing (a short write loses the rest: the
 * responses of one batch are far below a socket buffer): it is what the
 * machine costs, not a
 * server anyone should run.
 *
 *   floor 127.0.0.1:8080
 */
#define _GNU_SOURCE /* accept4 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

static const char RESPONSE[] =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\nHello World\n";
#define RESPONSE_LEN (sizeof RESPONSE - 1)
#define MAX_FDS 65536
#define PIPELINE_MAX 256

/* Bytes of an unfinished head per connection: only the last 3 matter, to
 * find a "\r\n\r\n" split across reads. */
static unsigned int tail[MAX_FDS];

static int listen_on(const char *spec) {
    char host[64];
    const char *colon = strrchr(spec, ':');
    if (!colon || (size_t)(colon - spec) >= sizeof host) return -1;
    memcpy(host, spec, colon - spec);
    host[colon - spec] = 0;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(colon + 1))};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) return -1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) || listen(fd, 4096)) return -1;
    return fd;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: floor HOST:PORT\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    int lfd = listen_on(argv[1]);
    if (lfd < 0) {
        perror("listen");
        return 1;
    }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    static char out[RESPONSE_LEN * PIPELINE_MAX];
    for (int i = 0; i < PIPELINE_MAX; i++) memcpy(out + i * RESPONSE_LEN, RESPONSE, RESPONSE_LEN);
    struct epoll_event events[256];
    char buf[65536];
    for (;;) {
        int n = epoll_wait(ep, events, 256, -1);
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == lfd) {
                int c;
                while ((c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    if (c >= MAX_FDS) {
                        close(c);
                        continue;
                    }
                    int one = 1;
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    tail[c] = 0;
                    struct epoll_event cev = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
                }
                continue;
            }
            ssize_t got = read(fd, buf, sizeof buf);
            if (got <= 0) {
                if (got < 0 && errno == EAGAIN) continue;
                close(fd);
                continue;
            }
            /* Count heads: each "\r\n\r\n" ends one (the state carries the
             * last bytes seen, as a shift register). */
            unsigned int state = tail[fd];
            int requests = 0;
            for (ssize_t k = 0; k < got; k++) {
                state = (state << 8) | (unsigned char)buf[k];
                if (state == 0x0d0a0d0a) requests++;
            }
            tail[fd] = state;
            while (requests > 0) {
                int batch = requests < PIPELINE_MAX ? requests : PIPELINE_MAX;
                if (write(fd, out, batch * RESPONSE_LEN) < 0) break;
                requests -= batch;
            }
        }
    }
}
