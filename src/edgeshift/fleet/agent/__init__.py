"""The edge agent: serves a device's model and installs what the control plane wants, through
A/B slots and a journal that survive a kill -9 at any point (docs/fleet.md, "The agent")."""

from edgeshift.fleet.agent.agent import CRASH_ENV, Agent, AgentOptions
from edgeshift.fleet.agent.host import ModelHost, ServerHost, ServingWindow
from edgeshift.fleet.agent.slots import Installer
from edgeshift.fleet.agent.transport import DeviceTransport, SignedFetcher

__all__ = [
    "CRASH_ENV",
    "Agent",
    "AgentOptions",
    "DeviceTransport",
    "Installer",
    "ModelHost",
    "ServerHost",
    "ServingWindow",
    "SignedFetcher",
]
