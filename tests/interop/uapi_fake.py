"""An in-memory UAPI backend with wireguard-go's set semantics (for protocol/server tests)."""

from __future__ import annotations

from meshguard.daemon.uapi_protocol import (
    EADDRINUSE,
    DeviceState,
    PeerState,
    SetRequest,
    UapiError,
)


class FakeBackend:
    def __init__(self) -> None:
        self.state = DeviceState(listen_port=51820)
        self.busy_ports: set[int] = set()
        self.sets = 0

    def uapi_get(self) -> DeviceState:
        return self.state

    def uapi_set(self, req: SetRequest) -> None:
        if req.listen_port is not None and req.listen_port in self.busy_ports:
            raise UapiError(EADDRINUSE, "port in use")
        self.sets += 1
        st = self.state
        if req.private_key_given:
            st.private_key = req.private_key
        if req.listen_port is not None:
            st.listen_port = req.listen_port
        if req.fwmark is not None:
            st.fwmark = req.fwmark
        if req.replace_peers:
            st.peers.clear()
        for pu in req.peers:
            peer = next((p for p in st.peers if p.public_key == pu.public_key), None)
            if pu.remove:
                if peer is not None:
                    st.peers.remove(peer)
                continue
            if peer is None:
                if pu.update_only:
                    continue
                peer = PeerState(pu.public_key)
                st.peers.append(peer)
            if pu.preshared_key is not None:
                peer.preshared_key = pu.preshared_key
            if pu.endpoint is not None:
                peer.endpoint = pu.endpoint
            if pu.persistent_keepalive is not None:
                peer.persistent_keepalive = pu.persistent_keepalive
            if pu.replace_allowed_ips:
                peer.allowed_ips.clear()
            for net in pu.allowed_ips:
                if net not in peer.allowed_ips:
                    peer.allowed_ips.append(net)
