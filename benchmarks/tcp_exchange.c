// Raw loopback TCP exchange, no ringflow: two processes (pinned to cores 0 and 1) each send S bytes
// and receive S bytes per iteration over K connections (stream i carries bytes [i*S/K, (i+1)*S/K)),
// one thread each, non-blocking sockets and poll, as ringflow's TCP transport. Prints the median of
// 40 iterations. What striping can give at most on a machine, before any ringflow code runs.
//   cc -O2 -o /tmp/tcp_exchange benchmarks/tcp_exchange.c && /tmp/tcp_exchange K S SOCKET_BUFFER
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
static double now() {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}
static int cmp(const void* a, const void* b) {
  double x = *(double*)a, y = *(double*)b;
  return x < y ? -1 : x > y;
}
static void opts(int fd, int buf) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (buf) {
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
  }
}
int main(int argc, char** argv) {
  int K = atoi(argv[1]);
  size_t S = strtoull(argv[2], 0, 0);
  int buf = atoi(argv[3]);
  int iters = 40;
  int lfd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(0x7f000001);
  bind(lfd, (void*)&a, sizeof a);
  listen(lfd, 16);
  socklen_t l = sizeof a;
  getsockname(lfd, (void*)&a, &l);
  int rank = fork() == 0;
  int fds[16];
  cpu_set_t cs;
  CPU_ZERO(&cs);
  CPU_SET(rank, &cs);
  sched_setaffinity(0, sizeof cs, &cs);
  for (int i = 0; i < K; i++) {
    if (rank) {
      fds[i] = socket(AF_INET, SOCK_STREAM, 0);
      opts(fds[i], buf);
      connect(fds[i], (void*)&a, sizeof a);
    } else {
      fds[i] = accept(lfd, 0, 0);
      opts(fds[i], buf);
    }
    fcntl(fds[i], F_SETFL, O_NONBLOCK);
  }
  char* sb = malloc(S);
  char* rb = malloc(S);
  memset(sb, 1, S);
  memset(rb, 0, S);
  double t[64];
  for (int it = 0; it < iters + 5; it++) {
    size_t sent[16] = {0}, got[16] = {0};
    int left = 2 * K;
    double t0 = now();
    while (left > 0) {
      struct pollfd p[16];
      for (int i = 0; i < K; i++) {
        size_t lo = S * i / K, hi = S * (i + 1) / K;
        p[i].fd = fds[i];
        p[i].events = (sent[i] < hi - lo ? POLLOUT : 0) | (got[i] < hi - lo ? POLLIN : 0);
      }
      poll(p, K, -1);
      for (int i = 0; i < K; i++) {
        size_t lo = S * i / K, hi = S * (i + 1) / K, n = hi - lo;
        if (sent[i] < n) {
          ssize_t w = send(fds[i], sb + lo + sent[i], n - sent[i], MSG_NOSIGNAL);
          if (w > 0) {
            sent[i] += w;
            if (sent[i] == n) left--;
          }
        }
        if (got[i] < n) {
          ssize_t r = recv(fds[i], rb + lo + got[i], n - got[i], 0);
          if (r > 0) {
            got[i] += r;
            if (got[i] == n) left--;
          }
        }
      }
    }
    if (it >= 5) t[it - 5] = now() - t0;
  }
  qsort(t, iters, sizeof(double), cmp);
  if (!rank) {
    printf("K=%d S=%zu buf=%d median %.1f us  %.2f GB/s\n", K, S, buf, t[iters / 2] * 1e6,
           S / t[iters / 2] / 1e9);
    wait(0);
  }
  return 0;
}
