/* RTP load generator and receiver for tests/bench/bench_transcoder.py (bench tooling, not runtime).
 *
 * Responsible for: sending N channels of RTP (20 ms ptime, precomputed payloads played in a loop,
 * channel phases spread evenly over the 20 ms) from one UDP socket to N targets on 127.0.0.1,
 * receiving what comes out at N receive sockets, and printing one JSON object with loss,
 * inter-arrival gaps, added latency, how far the generator itself fell behind its schedule, and a
 * sample of one channel's output payloads (so the caller can check the audio).
 * Not here: codecs, SIP/NG set-up, capacity search (the Python bench does those).
 *
 * Why C: the Python generator could not pace more than a few tens of channels on a loaded 2-core
 * machine, so the bench measured the generator. Here the process wakes at most every QUANTUM, sends
 * every packet due with sendmmsg and empties the receive sockets with recvmmsg. Channels may share
 * one receive port (b_port): the system's source port (src_port, its port facing B) then tells
 * them apart, and one recvmmsg reads 64 channels' packets.
 *
 * Arrival times are the kernel's (SO_TIMESTAMPNS), so a late wake-up of this process does not
 * count as latency or as a gap. Latency pairs an output packet with its input by the output RTP
 * timestamp: (ts - first output ts) / out_ticks counts frames from the first output (see the
 * pairing below for which input that answers). A system whose output timestamps skip where its
 * input's do is measured exactly; one that drops a packet and keeps its timestamps contiguous
 * shows the packets after it 20 ms late: an overestimate, never an underestimate.
 *
 * Spec file (whitespace separated):
 *   n seconds warmup pt ticks out_ticks a_port sample_channel sample_max max_seconds seed seq0 ts0
 * (seed: the channels' SSRCs; seq0, ts0: the first sequence number and timestamp of every channel)
 *   n lines: target_port b_port src_port
 *   m, then m payloads in hex
 * Every address is 127.0.0.1: the program cannot send anywhere else.
 * Bounded: it stops after max_seconds of wall time whatever happens.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PTIME_NS 20000000LL
#define BATCH 256
#define RBATCH 64
#define MAXPAYLOAD 1400
#define QUANTUM 500000LL /* ns between wake-ups at most: a packet leaves at most this late */

typedef struct {
    int32_t channel;
    int32_t frame; /* output frames since the channel's first output packet */
    int64_t arrival;
} record_t;

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t); /* the clock SO_TIMESTAMPNS uses */
    return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(double *xs, size_t n, double q) {
    if (n == 0)
        return -1.0; /* printed as null */
    qsort(xs, n, sizeof(double), cmp_double);
    size_t i = (size_t)(q / 100.0 * (double)(n - 1) + 0.5);
    return xs[i < n ? i : n - 1];
}

static void print_num(const char *key, double v) {
    if (v < 0)
        printf("\"%s\": null, ", key);
    else
        printf("\"%s\": %.4f, ", key, v);
}

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s SPEC\n", argv[0]);
        return 2;
    }
    FILE *f = fopen(argv[1], "r");
    if (!f) die("spec");
    int n, pt, a_port, sample_channel, sample_max;
    double seconds, warmup, max_seconds;
    long ticks, out_ticks;
    unsigned seed, seq0_in, ts0_in;
    if (fscanf(f, "%d %lf %lf %d %ld %ld %d %d %d %lf %u %u %u", &n, &seconds, &warmup, &pt, &ticks, &out_ticks,
               &a_port, &sample_channel, &sample_max, &max_seconds, &seed, &seq0_in, &ts0_in) != 13 || n <= 0 || n > 100000 ||
        out_ticks <= 0 || max_seconds <= 0) {
        fprintf(stderr, "bad spec header\n");
        return 2;
    }
    int *targets = calloc(n, sizeof(int)), *b_ports = calloc(n, sizeof(int)), *src_ports = calloc(n, sizeof(int));
    for (int i = 0; i < n; i++)
        if (fscanf(f, "%d %d %d", &targets[i], &b_ports[i], &src_ports[i]) != 3 || targets[i] <= 0 ||
            targets[i] > 65535 || b_ports[i] <= 0 || b_ports[i] > 65535 || src_ports[i] < 0 || src_ports[i] > 65535) {
            fprintf(stderr, "bad spec ports\n");
            return 2;
        }
    int m;
    if (fscanf(f, "%d", &m) != 1 || m <= 0) {
        fprintf(stderr, "bad spec payload count\n");
        return 2;
    }
    uint8_t (*payloads)[MAXPAYLOAD] = calloc(m, MAXPAYLOAD);
    int *payload_len = calloc(m, sizeof(int));
    char *hex = malloc(2 * MAXPAYLOAD + 2);
    for (int k = 0; k < m; k++) {
        if (fscanf(f, "%2801s", hex) != 1 || strlen(hex) % 2 || strlen(hex) / 2 > MAXPAYLOAD) {
            fprintf(stderr, "bad payload %d\n", k);
            return 2;
        }
        payload_len[k] = (int)strlen(hex) / 2;
        for (int j = 0; j < payload_len[k]; j++)
            payloads[k][j] = (uint8_t)(hexval(hex[2 * j]) * 16 + hexval(hex[2 * j + 1]));
    }
    fclose(f);

    struct rlimit rl = {n + 64, n + 64};
    struct rlimit cur;
    getrlimit(RLIMIT_NOFILE, &cur);
    if (cur.rlim_cur < rl.rlim_cur && setrlimit(RLIMIT_NOFILE, &rl) != 0) die("RLIMIT_NOFILE");
    prctl(PR_SET_TIMERSLACK, 1000UL); /* 1 us: pacing at 10 us spacing wants tight wake-ups */

    struct sockaddr_in lo = {.sin_family = AF_INET};
    lo.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

    int sender = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    if (sender < 0) die("socket");
    int big = 8 << 20;
    if (setsockopt(sender, SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof big) < 0)
        setsockopt(sender, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    struct sockaddr_in a = lo;
    a.sin_port = htons((uint16_t)a_port);
    if (bind(sender, (struct sockaddr *)&a, sizeof a) < 0) die("bind A");

    int ep = epoll_create1(0);
    if (ep < 0) die("epoll");
    /* One socket per distinct receive port; a packet's channel is its socket's only channel, or
     * the channel whose system port it came from. */
    static int sock_of_port[65536], by_src[65536];
    for (int x = 0; x < 65536; x++)
        sock_of_port[x] = by_src[x] = -1;
    int nsock = 0;
    int *fds = calloc(n, sizeof(int)), *sock_port = calloc(n, sizeof(int)), *sock_single = calloc(n, sizeof(int));
    for (int i = 0; i < n; i++) {
        if (src_ports[i]) {
            if (by_src[src_ports[i]] >= 0) {
                fprintf(stderr, "src_port %d twice\n", src_ports[i]);
                return 2;
            }
            by_src[src_ports[i]] = i;
        }
        int x = sock_of_port[b_ports[i]];
        if (x >= 0) {
            sock_single[x] = -1;
            continue;
        }
        int s = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
        if (s < 0) die("socket B");
        int one = 1, rcv = 8 << 20;
        setsockopt(s, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
        if (setsockopt(s, SOL_SOCKET, SO_RCVBUFFORCE, &rcv, sizeof rcv) < 0) /* root: above rmem_max */
            setsockopt(s, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
        struct sockaddr_in b = lo;
        b.sin_port = htons((uint16_t)b_ports[i]);
        if (bind(s, (struct sockaddr *)&b, sizeof b) < 0) die("bind B");
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)nsock};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev) < 0) die("epoll_ctl");
        sock_of_port[b_ports[i]] = nsock;
        fds[nsock] = s;
        sock_port[nsock] = b_ports[i];
        sock_single[nsock] = i;
        nsock++;
    }
    for (int i = 0; i < n; i++)
        if (!src_ports[i] && sock_single[sock_of_port[b_ports[i]]] != i) {
            fprintf(stderr, "channel %d shares its receive port and has no src_port\n", i);
            return 2;
        }

    long total_ticks = (long)((warmup + seconds) * 1e9 / PTIME_NS + 0.5);
    int64_t *send_time = calloc((size_t)n * total_ticks, sizeof(int64_t));
    double *lags = calloc((size_t)n * total_ticks, sizeof(double));
    size_t nlags = 0;
    uint32_t *ssrc = calloc(n, sizeof(uint32_t));
    /* The caller continues a channel's stream from one run to the next (same SSRC, sequence numbers
     * on from the last run's, timestamps moved by the time between): as a sender pausing. */
    srand(seed);
    for (int i = 0; i < n; i++)
        ssrc[i] = ((uint32_t)rand() << 16) ^ (uint32_t)rand();
    uint16_t seq0 = (uint16_t)seq0_in;
    uint32_t ts0 = (uint32_t)ts0_in;

    /* Receive state. */
    size_t rec_cap = (size_t)n * (total_ticks + 100) + 1024, nrec = 0;
    record_t *records = malloc(rec_cap * sizeof(record_t));
    double *gaps = malloc(rec_cap * sizeof(double));
    size_t ngaps = 0;
    uint32_t *first_ts = calloc(n, sizeof(uint32_t));
    uint8_t *have_ts = calloc(n, 1), *have_seq = calloc(n, 1);
    uint16_t *first_seq = calloc(n, sizeof(uint16_t));
    long *max_ahead = calloc(n, sizeof(long)), *received = calloc(n, sizeof(long));
    long *sent = calloc(n, sizeof(long));
    int64_t *last_arrival = calloc(n, sizeof(int64_t));
    long sent_all = 0, send_errors = 0, stray = 0, received_all = 0;
    int nsample = 0;
    char *sample_hex = malloc((size_t)(sample_max > 0 ? sample_max : 1) * (2 * MAXPAYLOAD + 4) + 4);
    size_t sample_len = 0;
    sample_hex[0] = 0;

    static uint8_t sbuf[BATCH][12 + MAXPAYLOAD];
    static struct mmsghdr smsg[BATCH];
    static struct iovec siov[BATCH];
    static struct sockaddr_in sdst[BATCH];
    static int sch[BATCH];
    static long sk[BATCH];
    static uint8_t rbuf[RBATCH][2048];
    static char rctl[RBATCH][CMSG_SPACE(sizeof(struct timespec))];
    static struct sockaddr_in rfrom[RBATCH];
    static struct mmsghdr rmsg[RBATCH];
    static struct iovec riov[RBATCH];
    struct epoll_event events[512];

    int64_t start = now_ns() + 200000000LL;
    int64_t measure_from = start + (int64_t)(warmup * 1e9);
    int64_t send_end = start + total_ticks * PTIME_NS;
    int64_t hard_end = start + (int64_t)(max_seconds * 1e9);
    int64_t drain_end = send_end + 300000000LL;
    long k = 0;
    int p = 0;
    struct rusage ru0;
    getrusage(RUSAGE_SELF, &ru0);

    for (;;) {
        int64_t now = now_ns(), woke = now;
        if (now >= hard_end || (k >= total_ticks && now >= drain_end))
            break;
        /* Send every packet due, in batches. */
        while (k < total_ticks) {
            int batch = 0;
            while (k < total_ticks && batch < BATCH) {
                int64_t slot = start + k * PTIME_NS + (int64_t)p * PTIME_NS / n;
                if (slot > now)
                    break;
                int i = p;
                int pl = (int)(k % m);
                uint8_t *h = sbuf[batch];
                h[0] = 0x80;
                h[1] = (uint8_t)pt;
                uint16_t seq = (uint16_t)(seq0 + k);
                h[2] = (uint8_t)(seq >> 8);
                h[3] = (uint8_t)seq;
                uint32_t ts = ts0 + (uint32_t)(k * ticks);
                h[4] = ts >> 24; h[5] = ts >> 16; h[6] = ts >> 8; h[7] = ts;
                h[8] = ssrc[i] >> 24; h[9] = ssrc[i] >> 16; h[10] = ssrc[i] >> 8; h[11] = ssrc[i];
                memcpy(h + 12, payloads[pl], payload_len[pl]);
                siov[batch].iov_base = h;
                siov[batch].iov_len = 12 + payload_len[pl];
                sdst[batch] = lo;
                sdst[batch].sin_port = htons((uint16_t)targets[i]);
                memset(&smsg[batch], 0, sizeof smsg[batch]);
                smsg[batch].msg_hdr.msg_name = &sdst[batch];
                smsg[batch].msg_hdr.msg_namelen = sizeof sdst[batch];
                smsg[batch].msg_hdr.msg_iov = &siov[batch];
                smsg[batch].msg_hdr.msg_iovlen = 1;
                sch[batch] = i;
                sk[batch] = k;
                if (slot >= measure_from)
                    lags[nlags++] = (double)(now - slot) / 1e6;
                batch++;
                if (++p == n) {
                    p = 0;
                    k++;
                }
            }
            if (batch == 0)
                break;
            int64_t t = now_ns();
            int done = 0, tries = 0;
            while (done < batch && tries++ < 100) {
                int r = sendmmsg(sender, smsg + done, batch - done, 0);
                if (r < 0) {
                    if (errno == EAGAIN || errno == EINTR || errno == ENOBUFS)
                        continue;
                    if (errno == ECONNREFUSED) /* an earlier ICMP error reported here: skip one */
                        r = 1;
                    else
                        die("sendmmsg");
                    send_errors++;
                }
                for (int j = done; j < done + r; j++) {
                    send_time[(size_t)sch[j] * total_ticks + sk[j]] = t;
                    sent_all++;
                    if (start + sk[j] * PTIME_NS + (int64_t)sch[j] * PTIME_NS / n >= measure_from)
                        sent[sch[j]]++;
                }
                done += r;
            }
            send_errors += batch - done;
            now = now_ns();
        }
        /* Receive what is there. */
        int ne = epoll_wait(ep, events, 512, 0);
        for (int e = 0; e < ne; e++) {
            int sk_index = (int)events[e].data.u32;
            for (int round = 0; round < 64; round++) {
                for (int j = 0; j < RBATCH; j++) {
                    riov[j].iov_base = rbuf[j];
                    riov[j].iov_len = sizeof rbuf[j];
                    memset(&rmsg[j].msg_hdr, 0, sizeof rmsg[j].msg_hdr);
                    rmsg[j].msg_hdr.msg_iov = &riov[j];
                    rmsg[j].msg_hdr.msg_iovlen = 1;
                    rmsg[j].msg_hdr.msg_control = rctl[j];
                    rmsg[j].msg_hdr.msg_controllen = sizeof rctl[j];
                    rmsg[j].msg_hdr.msg_name = &rfrom[j];
                    rmsg[j].msg_hdr.msg_namelen = sizeof rfrom[j];
                }
                int r = recvmmsg(fds[sk_index], rmsg, RBATCH, MSG_DONTWAIT, NULL);
                if (r <= 0)
                    break;
                int64_t fallback = now_ns();
                for (int j = 0; j < r; j++) {
                    uint8_t *d = rbuf[j];
                    unsigned len = rmsg[j].msg_len;
                    int64_t at = fallback;
                    for (struct cmsghdr *c = CMSG_FIRSTHDR(&rmsg[j].msg_hdr); c;
                         c = CMSG_NXTHDR(&rmsg[j].msg_hdr, c))
                        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
                            struct timespec ts;
                            memcpy(&ts, CMSG_DATA(c), sizeof ts);
                            at = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
                        }
                    int i = by_src[ntohs(rfrom[j].sin_port)];
                    if (i < 0 || b_ports[i] != sock_port[sk_index])
                        i = sock_single[sk_index];
                    if (i < 0) {
                        stray++; /* from a port no channel names, on a shared socket */
                        continue;
                    }
                    int rpt = d[1] & 0x7F;
                    if (len < 12 || (d[0] >> 6) != 2 || (rpt >= 72 && rpt <= 76)) {
                        stray++; /* RTCP (RFC 5761 §4 types) or not RTP */
                        continue;
                    }
                    received_all++;
                    uint16_t seq = (uint16_t)(d[2] << 8 | d[3]);
                    uint32_t ts = (uint32_t)d[4] << 24 | (uint32_t)d[5] << 16 | (uint32_t)d[6] << 8 | d[7];
                    if (!have_ts[i]) {
                        have_ts[i] = 1;
                        first_ts[i] = ts;
                    }
                    int32_t delta = (int32_t)(ts - first_ts[i]);
                    if (nrec < rec_cap) {
                        records[nrec].channel = i;
                        records[nrec].frame = (int32_t)(delta >= 0 ? (delta + out_ticks / 2) / out_ticks
                                                                   : -((-delta + out_ticks / 2) / out_ticks));
                        records[nrec].arrival = at;
                        nrec++;
                    }
                    if (at < measure_from)
                        continue;
                    if (!have_seq[i]) {
                        have_seq[i] = 1;
                        first_seq[i] = seq;
                    } else {
                        long ahead = (uint16_t)(seq - first_seq[i]);
                        if (ahead < 32768 && ahead > max_ahead[i])
                            max_ahead[i] = ahead;
                    }
                    received[i]++;
                    if (last_arrival[i] && ngaps < rec_cap)
                        gaps[ngaps++] = (double)(at - last_arrival[i]) / 1e6;
                    if (at > last_arrival[i])
                        last_arrival[i] = at;
                    if (i == sample_channel && nsample < sample_max) {
                        for (unsigned b = 12; b < len; b++)
                            sample_len += (size_t)sprintf(sample_hex + sample_len, "%02x", d[b]);
                        sample_hex[sample_len++] = ' ';
                        sample_hex[sample_len] = 0;
                        nsample++;
                    }
                }
                if (r < RBATCH)
                    break;
            }
        }
        /* Sleep until the next packet is due, but at least QUANTUM since this wake-up: what
         * arrives meanwhile waits in the socket with the kernel's arrival time on it. */
        int64_t next = k < total_ticks ? start + k * PTIME_NS + (int64_t)p * PTIME_NS / n : drain_end;
        if (next < woke + QUANTUM)
            next = woke + QUANTUM;
        if (next > woke + 5 * QUANTUM)
            next = woke + 5 * QUANTUM;
        struct timespec until = {(time_t)(next / 1000000000LL), (long)(next % 1000000000LL)};
        while (clock_nanosleep(CLOCK_REALTIME, TIMER_ABSTIME, &until, NULL) == EINTR)
            ;
    }
    struct rusage ru1;
    getrusage(RUSAGE_SELF, &ru1);
    double gen_cpu = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec + ru1.ru_stime.tv_sec -
                              ru0.ru_stime.tv_sec) +
                     (double)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec + ru1.ru_stime.tv_usec -
                              ru0.ru_stime.tv_usec) / 1e6;

    /* Pairing: output frame f of a channel answers input frame f + o. The offset o is the smallest
     * of two bounds: the one that puts the channel's smallest latency in [0, 20 ms) (o cannot be
     * more, or some packet would have left before its input came), and the one that pairs the last
     * output with the last input (o cannot be more, or that output would have no input). A system
     * that drops the first input gets o = 1 from both, one that holds every packet 40 ms gets o = 0
     * from the second, and one that sends frame f when input f + 1 comes (a resampler's look-ahead)
     * and never flushes the last gets o = 1: latency is then packet in -> the packet out it caused,
     * and the frame held is counted in anchor_late (channels with o > 0), not as latency. On a
     * stream's first run such a system's first output is the first input's audio: o = 0 would show
     * the 20 ms held, but on later runs the held frame of the run before comes first; the pairing
     * must mean the same on every run. */
    int64_t *min_d = malloc(n * sizeof(int64_t));
    long *max_frame = malloc(n * sizeof(long));
    for (int i = 0; i < n; i++) {
        min_d[i] = INT64_MAX;
        max_frame[i] = -1;
    }
    for (size_t r = 0; r < nrec; r++) {
        int i = records[r].channel;
        int64_t d = records[r].arrival - (start + (int64_t)records[r].frame * PTIME_NS + (int64_t)i * PTIME_NS / n);
        if (d < min_d[i])
            min_d[i] = d;
        if (records[r].frame > max_frame[i])
            max_frame[i] = records[r].frame;
    }
    long *offset = calloc(n, sizeof(long));
    int anchor_late = 0; /* channels whose first output was not of the first input */
    for (int i = 0; i < n; i++) {
        if (max_frame[i] < 0)
            continue;
        long by_min = (long)(min_d[i] >= 0 ? min_d[i] / PTIME_NS : -((-min_d[i] + PTIME_NS - 1) / PTIME_NS));
        long by_end = total_ticks - 1 - max_frame[i];
        offset[i] = by_min < by_end ? by_min : by_end;
        if (offset[i] < 0)
            offset[i] = 0;
        anchor_late += offset[i] > 0;
    }
    double *lat = malloc((nrec + 1) * sizeof(double));
    uint8_t *got = calloc((size_t)n * total_ticks, 1);
    size_t nlat = 0, unmatched = 0, duplicates = 0;
    for (size_t r = 0; r < nrec; r++) {
        int i = records[r].channel;
        long j = records[r].frame + offset[i];
        if (j < 0 || j >= total_ticks || send_time[(size_t)i * total_ticks + j] == 0) {
            unmatched++;
            continue;
        }
        if (got[(size_t)i * total_ticks + j]++) {
            duplicates++;
            continue;
        }
        if (records[r].arrival >= measure_from)
            lat[nlat++] = (double)(records[r].arrival - send_time[(size_t)i * total_ticks + j]) / 1e6;
    }

    long total_sent = 0, total_received = 0, expected = 0;
    int silent = 0;
    for (int i = 0; i < n; i++) {
        total_sent += sent[i];
        total_received += received[i];
        if (have_seq[i])
            expected += max_ahead[i] + 1;
        if (received[i] == 0)
            silent++;
    }
    /* Loss: the inputs sent in the measured window whose output never came (paired by timestamp,
     * so a late packet at the window's edge is neither lost nor double counted); or, if more, the
     * gaps in the output sequence numbers seen in the window (a system that renumbers). */
    long paired_lost = 0;
    for (int i = 0; i < n; i++)
        for (long j = 0; j < total_ticks; j++) {
            size_t x = (size_t)i * total_ticks + j;
            if (send_time[x] && start + j * PTIME_NS + (int64_t)i * PTIME_NS / n >= measure_from && !got[x])
                paired_lost++;
        }
    long seq_lost = expected - total_received;
    long lost = paired_lost > seq_lost ? paired_lost : seq_lost;
    if (lost < 0)
        lost = 0;

    printf("{\"channels\": %d, \"sent\": %ld, \"sent_all\": %ld, \"received\": %ld, \"received_all\": %ld, "
           "\"lost\": %ld, \"loss\": %.6f, \"silent_channels\": %d, \"send_errors\": %ld, \"stray\": %ld, "
           "\"unmatched\": %zu, \"duplicates\": %zu, \"paired_lost\": %ld, \"anchor_late\": %d, "
           "\"gen_cpu_s\": %.4f, ",
           n, total_sent, sent_all, total_received, received_all, lost,
           total_sent ? (double)lost / (double)total_sent : 1.0, silent, send_errors, stray, unmatched, duplicates,
           paired_lost, anchor_late,
           gen_cpu);
    print_num("gap_p99_ms", pct(gaps, ngaps, 99));
    print_num("latency_p50_ms", pct(lat, nlat, 50));
    print_num("latency_p99_ms", pct(lat, nlat, 99));
    print_num("lag_p99_ms", pct(lags, nlags, 99));
    printf("\"sample\": \"%s\"}\n", sample_hex);
    return 0;
}
