"""Independent SIP and RTP peers for integration tests and benchmarks.

Plain classes (no pytest in them) that start other people's SIP stacks on loopback or in a network
namespace and drive them: baresip over its ctrl_tcp socket, PJSIP (pjsua2) in a child process over
a JSON pipe, sipp through bounded scenario runs. `rtp` has an RTP receiver and sender for measuring
media, `netns` network namespaces, `ports` free port numbers. Every process they start is stopped by
its PID and every wait is bounded by a timeout.
"""
