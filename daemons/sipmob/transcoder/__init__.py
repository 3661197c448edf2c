"""sipmob-transcoder: the transcoder gateway (session mobility draft §6.1, Fig. 7; RFC 4117).

Invoked by third-party call control (`sipmob.transcoder.invocation` says the SDP convention), it
converts or relays each party's RTP (`sipmob.media.transcode`), registers itself in SLP, and refuses
strangers (403) and calls over its capacity (503). `sipmob.transcoder.main` says why it is one
single-threaded process per core.

DTMF: telephone-event (RFC 4733) crosses with its timestamps moved when both sides have it. When
one side lacks it, digits cross between events and SIP INFO in the controller's dialog, with a
``Side=A``/``Side=B`` line naming the party that pressed the key (RFC 4117 leaves the parties' INFO
at the controller). The convention is in `sipmob.transcoder.invocation`, the INFO handling in
`sipmob.transcoder.app`, the events played and heard in `sipmob.transcoder.worker`. Both ways are
bounded per call.
"""
