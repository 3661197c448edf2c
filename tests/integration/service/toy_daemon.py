"""A minimal daemon on the shared runtime, for testing `sipmob.service.daemon` as a real process."""

from __future__ import annotations

import dataclasses
import logging
import sys

from twisted.internet import protocol

from sipmob.service.config import port, setting
from sipmob.service.daemon import DaemonSpec, Runtime, run

log = logging.getLogger("sipmob.toy")


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    port: int = setting(0, check=port)
    greeting: str = setting("hello")


class Toy:
    def __init__(self, config: ToyConfig, runtime: Runtime) -> None:
        self.config = config
        self.runtime = runtime
        self.port = None

    def start(self):
        self.port = self.runtime.reactor.listenUDP(self.config.port, protocol.DatagramProtocol(),
                                                   interface="127.0.0.1")

    def reload(self, config: ToyConfig) -> None:
        self.config = config
        log.info("greeting is now %s", config.greeting)

    def stop(self):
        log.info("toy stopped cleanly")
        return self.port.stopListening() if self.port else None

    def status(self) -> str:
        return f"greeting {self.config.greeting}"


spec = DaemonSpec(name="toy", config_type=ToyConfig, build=Toy)

if __name__ == "__main__":
    sys.exit(run(spec))
