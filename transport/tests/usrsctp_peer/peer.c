/*
 * Interop peer for poolflow's SCTP-over-UDP transport, built on usrsctp (an independent SCTP
 * stack, the FreeBSD kernel code in user space) with RFC 6951 UDP encapsulation.
 *
 * usage: peer SERVER_IP SERVER_UDP_PORT SERVER_SCTP_PORT LOCAL_UDP_PORT
 *
 * Connects, sends the messages listed in `outgoing` (several streams, PPIDs, one unordered,
 * one PR-SCTP, one fragmented), expects each one echoed back with the same stream, PPID and
 * unordered flag, then shuts down gracefully. Prints one line per event; exit code 0 only if
 * every echo matched.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <usrsctp.h>

#define MESSAGES 11
#define BIG 20000

struct outgoing {
	uint16_t stream;
	uint32_t ppid;
	int unordered;
	int pr_rtx; /* -1: reliable, else PR-SCTP limited retransmissions */
	size_t len;
	char data[BIG];
	int echoed;
};

static struct outgoing outgoing[MESSAGES];

static void fill(void)
{
	static const uint16_t streams[4] = {0, 1, 2, 5};
	static const uint32_t ppids[4] = {11, 12, 18, 0xabcdef01u};
	for (int i = 0; i < MESSAGES; i++) {
		struct outgoing *m = &outgoing[i];
		m->stream = streams[i % 4];
		m->ppid = ppids[i % 4];
		m->pr_rtx = -1;
		m->len = (size_t)snprintf(m->data, sizeof m->data, "usrsctp message %d", i);
	}
	outgoing[8].stream = 3;
	outgoing[8].ppid = 7;
	outgoing[8].unordered = 1;
	outgoing[9].stream = 4;
	outgoing[9].ppid = 8;
	outgoing[9].pr_rtx = 2;
	outgoing[9].len = 3000;
	for (size_t b = 0; b < 3000; b++)
		outgoing[9].data[b] = (char)('a' + b % 26);
	outgoing[10].stream = 6;
	outgoing[10].ppid = 9;
	outgoing[10].len = BIG;
	for (size_t b = 0; b < BIG; b++)
		outgoing[10].data[b] = (char)(b * 7);
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: %s SERVER_IP SERVER_UDP_PORT SERVER_SCTP_PORT LOCAL_UDP_PORT\n", argv[0]);
		return 2;
	}
	alarm(30); /* never outlive a stuck test */
	fill();
	usrsctp_init((uint16_t)atoi(argv[4]), NULL, NULL);
	usrsctp_sysctl_set_sctp_blackhole(2);

	struct socket *sock = usrsctp_socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP, NULL, NULL, 0, NULL);
	if (!sock) {
		perror("usrsctp_socket");
		return 1;
	}
	struct sctp_udpencaps encaps;
	memset(&encaps, 0, sizeof encaps);
	encaps.sue_address.ss_family = AF_INET;
	encaps.sue_port = htons((uint16_t)atoi(argv[2]));
	if (usrsctp_setsockopt(sock, IPPROTO_SCTP, SCTP_REMOTE_UDP_ENCAPS_PORT, &encaps, sizeof encaps) < 0) {
		perror("SCTP_REMOTE_UDP_ENCAPS_PORT");
		return 1;
	}
	struct sctp_initmsg init;
	memset(&init, 0, sizeof init);
	init.sinit_num_ostreams = 16;
	init.sinit_max_instreams = 16;
	usrsctp_setsockopt(sock, IPPROTO_SCTP, SCTP_INITMSG, &init, sizeof init);
	const int on = 1;
	usrsctp_setsockopt(sock, IPPROTO_SCTP, SCTP_RECVRCVINFO, &on, sizeof on);

	struct sockaddr_in server;
	memset(&server, 0, sizeof server);
	server.sin_family = AF_INET;
	server.sin_port = htons((uint16_t)atoi(argv[3]));
	inet_pton(AF_INET, argv[1], &server.sin_addr);
	if (usrsctp_connect(sock, (struct sockaddr *)&server, sizeof server) < 0) {
		perror("usrsctp_connect");
		return 1;
	}
	/* Negotiated PR-SCTP support of this association (ours and the peer's). */
	struct sctp_assoc_value pr;
	socklen_t pr_len = sizeof pr;
	memset(&pr, 0, sizeof pr);
	pr.assoc_id = SCTP_CURRENT_ASSOC;
	if (usrsctp_getsockopt(sock, IPPROTO_SCTP, SCTP_PR_SUPPORTED, &pr, &pr_len) == 0)
		printf("PEER pr-sctp negotiated=%u\n", pr.assoc_value);
	printf("PEER connected\n");
	fflush(stdout);

	for (int i = 0; i < MESSAGES; i++) {
		struct outgoing *m = &outgoing[i];
		struct sctp_sendv_spa spa;
		memset(&spa, 0, sizeof spa);
		spa.sendv_flags = SCTP_SEND_SNDINFO_VALID;
		spa.sendv_sndinfo.snd_sid = m->stream;
		spa.sendv_sndinfo.snd_ppid = htonl(m->ppid); /* the socket API takes network order */
		spa.sendv_sndinfo.snd_flags = m->unordered ? SCTP_UNORDERED : 0;
		if (m->pr_rtx >= 0) {
			spa.sendv_flags |= SCTP_SEND_PRINFO_VALID;
			spa.sendv_prinfo.pr_policy = SCTP_PR_SCTP_RTX;
			spa.sendv_prinfo.pr_value = (uint32_t)m->pr_rtx;
		}
		if (usrsctp_sendv(sock, m->data, m->len, NULL, 0, &spa, sizeof spa, SCTP_SENDV_SPA, 0) < 0) {
			perror("usrsctp_sendv");
			return 1;
		}
	}
	printf("PEER sent %d\n", MESSAGES);
	fflush(stdout);

	static char buffer[BIG + 1024];
	size_t have = 0;
	int matched = 0;
	while (matched < MESSAGES) {
		struct sctp_rcvinfo info;
		socklen_t info_len = sizeof info;
		unsigned int info_type = 0;
		int flags = 0;
		struct sockaddr_in from;
		socklen_t from_len = sizeof from;
		ssize_t n = usrsctp_recvv(sock, buffer + have, sizeof buffer - have, (struct sockaddr *)&from,
		                          &from_len, &info, &info_len, &info_type, &flags);
		if (n <= 0) {
			printf("PEER recv ended early (%zd, errno %d) after %d echoes\n", n, errno, matched);
			return 1;
		}
		have += (size_t)n;
		if (!(flags & MSG_EOR))
			continue; /* more of the same message follows */
		uint32_t ppid = ntohl(info.rcv_ppid);
		int unordered = (info.rcv_flags & SCTP_UNORDERED) != 0;
		int found = -1;
		for (int i = 0; i < MESSAGES; i++) {
			struct outgoing *m = &outgoing[i];
			if (!m->echoed && m->stream == info.rcv_sid && m->ppid == ppid && m->len == have &&
			    m->unordered == unordered && memcmp(m->data, buffer, have) == 0) {
				found = i;
				break;
			}
		}
		printf("PEER echo stream=%u ppid=%u len=%zu unordered=%d -> %s\n", info.rcv_sid, ppid, have,
		       unordered, found >= 0 ? "match" : "MISMATCH");
		fflush(stdout);
		if (found < 0)
			return 1;
		outgoing[found].echoed = 1;
		matched++;
		have = 0;
	}
	/* Stay idle a while: the other side's path supervision heartbeats us meanwhile. */
	usleep(600000);
	usrsctp_close(sock); /* graceful SHUTDOWN */
	/* Let the SHUTDOWN exchange finish before the stack goes away. */
	for (int i = 0; i < 100 && usrsctp_finish() != 0; i++)
		usleep(20000);
	printf("PEER OK %d echoes matched\n", matched);
	return 0;
}
