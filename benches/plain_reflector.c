// The baseline of benches/e2e.sh: a plain recvmmsg/sendmmsg UDP reflector, no GWLB rules (it
// sends every datagram to REPLY from its listen port, through the ordinary UDP socket; no GRO,
// no GSO). Exits after SECS seconds or on SIGTERM, printing how many datagrams it reflected.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>
#define B 32
#define S 9100
static volatile sig_atomic_t stop;
static void on_term(int s) { (void)s; stop = 1; }
int main(int c, char **v) {
  if (c < 5) { fprintf(stderr, "plain LISTEN_IP PORT REPLY_IP REPLY_PORT [SECS]\n"); return 2; }
  int secs = c > 5 ? atoi(v[5]) : 60;
  signal(SIGTERM, on_term);
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  int buf = 8 << 20; setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &buf, sizeof buf);
  setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &buf, sizeof buf);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(v[2]))};
  inet_pton(AF_INET, v[1], &a.sin_addr);
  if (bind(fd, (void *)&a, sizeof a)) { perror("bind"); return 1; }
  struct sockaddr_in r = {.sin_family = AF_INET, .sin_port = htons(atoi(v[4]))};
  inet_pton(AF_INET, v[3], &r.sin_addr);
  struct timeval tv = {0, 100000}; setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  static char data[B][S]; struct iovec iov[B]; struct mmsghdr m[B], o[B];
  time_t end = time(0) + secs; unsigned long total = 0;
  while (!stop && time(0) < end) {
    memset(m, 0, sizeof m);
    for (int i = 0; i < B; i++) { iov[i].iov_base = data[i]; iov[i].iov_len = S; m[i].msg_hdr.msg_iov = &iov[i]; m[i].msg_hdr.msg_iovlen = 1; }
    int n = recvmmsg(fd, m, B, 0, 0);
    if (n <= 0) continue;
    memset(o, 0, sizeof o);
    for (int i = 0; i < n; i++) { iov[i].iov_len = m[i].msg_len; o[i].msg_hdr.msg_iov = &iov[i]; o[i].msg_hdr.msg_iovlen = 1; o[i].msg_hdr.msg_name = &r; o[i].msg_hdr.msg_namelen = sizeof r; }
    int done = 0; while (done < n) { int k = sendmmsg(fd, o + done, n - done, 0); if (k <= 0) break; done += k; }
    total += n;
  }
  printf("%lu\n", total);
  return 0;
}
