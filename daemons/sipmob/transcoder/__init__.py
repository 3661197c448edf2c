"""sipmob-transcoder: the transcoder gateway (session mobility draft §6.1, Fig. 7; RFC 4117).

Invoked by third-party call control (`sipmob.transcoder.invocation` says the SDP convention), it
converts or relays each party's RTP (`sipmob.media.transcode`), registers itself in SLP, and refuses
strangers (403) and calls over its capacity (503). `sipmob.transcoder.main` says why it is one
single-threaded process per core.
"""
