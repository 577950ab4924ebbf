// What one packet costs through each way of sending a UDP datagram on this kernel, and what
// the receive side's control messages cost: one thread sends N datagrams of SIZE bytes to a
// UDP socket in sendmmsg batches of 32 (outer source ports cycling over 64, as GWLB's flows)
// and drains them with recvmmsg, so the figure is send + delivery + receive per packet.
// Deterministic enough to compare paths (full batches, one core, no second process). Used for
// docs/performance.md ("Single packets"); needs root.
//   cc -O2 -o send_paths benches/send_paths.c
//   taskset -c 1 ./send_paths MODE SIZE N [pktinfo]
// MODE: udp (one UDP socket: the plain reflector's path, from a fixed port), rawhdr
// (IPPROTO_RAW, IP_HDRINCL, 28-byte header iovec), rawudp (raw IPPROTO_UDP, 8-byte header
// iovec, bound and connected to its own address: labelwall's raw path; NOCONNECT=1 skips the
// connect, DSTRESET=1 drops the route the connect cached, "pktinfo" as 4th argument sets the
// source per message instead of binding), udpport (64 UDP sockets, one per source port,
// connected: one send per packet), packet (AF_PACKET, whole Ethernet frames: labelwall's
// packet socket; BYPASS=1 adds PACKET_QDISC_BYPASS). RXCMSG=1 asks the receiver for
// IP_PKTINFO, UDP_GRO and the sender's address, TOS=1 also for IP_RECVTOS.
// By default over loopback (127.0.0.1 -> 127.0.0.2), where "packet" cannot deliver (the
// receiver drops frames with a local source address). Over a veth pair between two network
// namespaces A (LA) and B (RA), run it inside A with RXNS=/var/run/netns/B (the receiving
// socket is opened there), RA, LA, CA (an unused address of A's subnet, for rawudp's connect),
// IF (A's veth) and DMAC (B's veth's hardware address). The setup behind the figures in
// docs/performance.md ("On a link: the packet socket"), 3 runs of each MODE:
//   ip netns add A; ip netns add B; ip link add vA netns A type veth peer name vB netns B
//   ip -n A addr add 10.9.0.1/24 dev vA; ip -n B addr add 10.9.0.2/24 dev vB
//   ip -n A link set vA up; ip -n B link set vB up
//   ip netns exec A env RXNS=/var/run/netns/B RA=10.9.0.2 LA=10.9.0.1 CA=10.9.0.254 IF=vA
//     DMAC=$(ip -n B -br link show vB | awk '{print $3}') DSTRESET=1
//     taskset -c 1 ./send_paths MODE 128 1000000
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <linux/filter.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/udp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <sched.h>
#include <fcntl.h>
#include <net/if.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
static unsigned short ipsum(unsigned char *h){unsigned s=0;for(int i=0;i<20;i+=2)s+=(h[i]<<8)|h[i+1];while(s>>16)s=(s&0xffff)+(s>>16);return htons(~s);}
#define B 32
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
int main(int c, char **v) {
  const char *mode = v[1]; int size = atoi(v[2]); long n = atol(v[3]); int pktinfo = c > 4;
  int self = open("/proc/self/ns/net", O_RDONLY); if (getenv("RXNS")) { int f = open(getenv("RXNS"), O_RDONLY); if (setns(f, CLONE_NEWNET)) perror("setns"); }
  int rx = socket(AF_INET, SOCK_DGRAM, 0); int buf = 32 << 20;
  setsockopt(rx, SOL_SOCKET, SO_RCVBUFFORCE, &buf, 4);
  struct sockaddr_in ra = {.sin_family = AF_INET, .sin_port = htons(40000 + getpid() % 20000)}; inet_pton(AF_INET, getenv("RA") ? getenv("RA") : "127.0.0.2", &ra.sin_addr);
  int rxc = getenv("RXCMSG") != 0, one = 1; static char rctl[B][128]; struct sockaddr_in rsrc[B];
  if (rxc) { setsockopt(rx, IPPROTO_IP, IP_PKTINFO, &one, 4); if (getenv("TOS")) setsockopt(rx, IPPROTO_IP, IP_RECVTOS, &one, 4); setsockopt(rx, SOL_UDP, 104, &one, 4); }
  if (bind(rx, (void *)&ra, sizeof ra)) { perror("bind rx"); return 1; }
  if (getenv("RXNS")) setns(self, CLONE_NEWNET);
  struct sockaddr_in la = {.sin_family = AF_INET}; inet_pton(AF_INET, getenv("LA") ? getenv("LA") : "127.0.0.1", &la.sin_addr);
  int fd; int udp = !strcmp(mode, "udp"), hdr = !strcmp(mode, "rawhdr"), port = !strcmp(mode, "udpport"), nocon = getenv("NOCONNECT") != 0;
  int pfd[64]; int pk = !strcmp(mode, "packet"); static unsigned char eh[B][44]; struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_ifindex = 1, .sll_halen = 6}; unsigned char dmac[6] = {0}; if (getenv("IF")) sll.sll_ifindex = if_nametoindex(getenv("IF")); if (getenv("DMAC")) sscanf(getenv("DMAC"), "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", dmac, dmac+1, dmac+2, dmac+3, dmac+4, dmac+5);
  if (port) { for (int i = 0; i < 64; i++) { pfd[i] = socket(AF_INET, SOCK_DGRAM, 0); struct sockaddr_in b = la; b.sin_port = htons(30000 + i); if (bind(pfd[i], (void *)&b, sizeof b)) perror("bind port"); connect(pfd[i], (void *)&ra, sizeof ra); } }
  if (udp || port) { fd = socket(AF_INET, SOCK_DGRAM, 0); bind(fd, (void *)&la, sizeof la); }
  else if (pk) { fd = socket(AF_PACKET, SOCK_RAW, 0); struct sockaddr_ll b = {.sll_family = AF_PACKET, .sll_ifindex = sll.sll_ifindex}; if (bind(fd, (void *)&b, sizeof b)) perror("bind pk"); if (getenv("BYPASS")) setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, 4); }
  else if (hdr) fd = socket(AF_INET, SOCK_RAW, IPPROTO_RAW);
  else { fd = socket(AF_INET, SOCK_RAW, IPPROTO_UDP); int d = IP_PMTUDISC_DO; setsockopt(fd, IPPROTO_IP, IP_MTU_DISCOVER, &d, 4);
    struct sock_filter f = {0x06, 0, 0, 0}; struct sock_fprog p = {1, &f}; setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &p, sizeof p);
    if (!pktinfo) bind(fd, (void *)&la, sizeof la);
    struct sockaddr_in d2 = {.sin_family = AF_INET}; inet_pton(AF_INET, getenv("CA") ? getenv("CA") : "127.255.255.254", &d2.sin_addr); if (!nocon && connect(fd, (void *)&d2, sizeof d2)) perror("connect");
    if (getenv("DSTRESET")) { int t = 4; setsockopt(fd, IPPROTO_IP, IP_TOS, &t, 4); t = 0; setsockopt(fd, IPPROTO_IP, IP_TOS, &t, 4); } }
  setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &buf, 4);
  static char payload[B][9100]; unsigned char h[B][28]; struct iovec iov[B][2]; struct mmsghdr m[B];
  char ctl[B][64];
  static char rbuf[B][9100]; struct iovec riov[B]; struct mmsghdr rm[B];
  for (int i = 0; i < B; i++) { riov[i].iov_base = rbuf[i]; riov[i].iov_len = 9100; memset(&rm[i], 0, sizeof rm[i]); rm[i].msg_hdr.msg_iov = &riov[i]; rm[i].msg_hdr.msg_iovlen = 1; }
  long sent = 0, got = 0; double t0 = now(); clock_t c0 = clock();
  while (sent < n) {
    memset(m, 0, sizeof m);
    for (int i = 0; i < B; i++) {
      struct iphdr *ip = (void *)h[i]; struct udphdr *u = (void *)(h[i] + 20);
      memset(ip, 0, 20); ip->version = 4; ip->ihl = 5; ip->ttl = 64; ip->protocol = 17; ip->frag_off = htons(0x4000);
      ip->tot_len = htons(28 + size); ip->saddr = la.sin_addr.s_addr; ip->daddr = ra.sin_addr.s_addr;
      u->source = htons(30000 + (sent + i) % 64); u->dest = ra.sin_port; u->len = htons(8 + size); u->check = 0;
      m[i].msg_hdr.msg_name = &ra; m[i].msg_hdr.msg_namelen = sizeof ra;
      if (pk) { memset(eh[i], 0, 14); memcpy(eh[i], dmac, 6); eh[i][12] = 8; memcpy(eh[i] + 14, h[i], 28); ip = (void *)(eh[i] + 14); ip->check = ipsum(eh[i] + 14); iov[i][0].iov_base = eh[i]; iov[i][0].iov_len = 42; iov[i][1].iov_base = payload[i]; iov[i][1].iov_len = size; m[i].msg_hdr.msg_iovlen = 2; m[i].msg_hdr.msg_name = &sll; m[i].msg_hdr.msg_namelen = sizeof sll; }
      else if (udp) { iov[i][0].iov_base = payload[i]; iov[i][0].iov_len = size; m[i].msg_hdr.msg_iovlen = 1; }
      else { iov[i][0].iov_base = hdr ? h[i] : h[i] + 20; iov[i][0].iov_len = hdr ? 28 : 8; iov[i][1].iov_base = payload[i]; iov[i][1].iov_len = size; m[i].msg_hdr.msg_iovlen = 2; }
      m[i].msg_hdr.msg_iov = iov[i];
      if (pktinfo && !udp && !hdr) { struct cmsghdr *cm = (void *)ctl[i]; cm->cmsg_level = IPPROTO_IP; cm->cmsg_type = IP_PKTINFO; cm->cmsg_len = CMSG_LEN(sizeof(struct in_pktinfo));
        struct in_pktinfo *pi = (void *)CMSG_DATA(cm); memset(pi, 0, sizeof *pi); pi->ipi_spec_dst = la.sin_addr; m[i].msg_hdr.msg_control = ctl[i]; m[i].msg_hdr.msg_controllen = CMSG_SPACE(sizeof *pi); }
    }
    int k; if (port) { for (int i = 0; i < B; i++) { if (send(pfd[(sent + i) % 64], payload[i], size, 0) < 0) perror("send"); } k = B; } else k = sendmmsg(fd, m, B, 0); if (k < 0) { perror("sendmmsg"); return 1; } sent += k;
    if (rxc) for (int i = 0; i < B; i++) { rm[i].msg_hdr.msg_control = rctl[i]; rm[i].msg_hdr.msg_controllen = 128; rm[i].msg_hdr.msg_name = &rsrc[i]; rm[i].msg_hdr.msg_namelen = sizeof rsrc[i]; }
    int r; while ((r = recvmmsg(rx, rm, B, MSG_DONTWAIT, 0)) > 0) got += r;
  }
  double dt = now() - t0; double cpu = (double)(clock() - c0) / CLOCKS_PER_SEC;
  printf("%-7s %s size %d sent %ld got %ld wall %.0f ns/pkt cpu %.0f ns/pkt\n", mode, pktinfo ? "pktinfo" : "", size, sent, got, dt * 1e9 / sent, cpu * 1e9 / sent);
  return 0;
}
