"""Allowed IPs: a path-compressed binary trie for longest-prefix match (paper section 2,
"cryptokey routing"), one per address family, keyed by raw address bytes.

It answers both questions of cryptokey routing: which peer an outgoing packet goes to
(lookup of the destination) and whether an incoming packet's inner source belongs to the peer
that sent it (lookup of the source, compared with the sender).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Generic, TypeVar

V = TypeVar("V")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class _Node(Generic[V]):
    __slots__ = ("bits", "children", "key", "value")

    def __init__(self, key: int, bits: int, value: V | None) -> None:
        self.key = key  # the prefix, as an int left-aligned in the family's width, host bits 0
        self.bits = bits  # prefix length
        self.value = value
        self.children: list[_Node[V] | None] = [None, None]


def _mask(width: int, bits: int) -> int:
    return ((1 << bits) - 1) << (width - bits) if bits else 0


class _Trie(Generic[V]):
    """Path-compressed binary trie over `width`-bit keys."""

    __slots__ = ("root", "width")

    def __init__(self, width: int) -> None:
        self.width = width
        self.root: _Node[V] | None = None

    def _bit(self, key: int, pos: int) -> int:
        return (key >> (self.width - 1 - pos)) & 1

    def _common(self, a: int, b: int, limit: int) -> int:
        x = (a ^ b) >> (self.width - limit) if limit else 0
        if x == 0:
            return limit
        return limit - x.bit_length()

    def insert(self, key: int, bits: int, value: V) -> None:
        key &= _mask(self.width, bits)
        link_parent: _Node[V] | None = None
        link_dir = 0
        node = self.root
        while True:
            if node is None:
                new = _Node(key, bits, value)
                self._link(link_parent, link_dir, new)
                return
            common = self._common(node.key, key, min(node.bits, bits))
            if common == node.bits == bits:
                node.value = value
                return
            if common == node.bits:  # node is a prefix of key: descend
                link_parent, link_dir = node, self._bit(key, node.bits)
                node = node.children[link_dir]
                continue
            if common == bits:  # key is a prefix of node: new node above
                new = _Node(key, bits, value)
                new.children[self._bit(node.key, bits)] = node
                self._link(link_parent, link_dir, new)
                return
            # split: a valueless branch node at the common prefix
            branch: _Node[V] = _Node(key & _mask(self.width, common), common, None)
            branch.children[self._bit(node.key, common)] = node
            branch.children[self._bit(key, common)] = _Node(key, bits, value)
            self._link(link_parent, link_dir, branch)
            return

    def _link(self, parent: _Node[V] | None, d: int, node: _Node[V]) -> None:
        if parent is None:
            self.root = node
        else:
            parent.children[d] = node

    def lookup(self, key: int) -> V | None:
        best: V | None = None
        node = self.root
        width = self.width
        while node is not None:
            bits = node.bits
            if bits and (key ^ node.key) >> (width - bits):
                break
            if node.value is not None:
                best = node.value
            if bits == width:
                break
            node = node.children[(key >> (width - 1 - bits)) & 1]
        return best

    def exact(self, key: int, bits: int) -> V | None:
        key &= _mask(self.width, bits)
        node = self.root
        while node is not None and node.bits <= bits:
            if node.bits and (key ^ node.key) >> (self.width - node.bits):
                return None
            if node.bits == bits:
                return node.value
            node = node.children[self._bit(key, node.bits)]
        return None

    def items(self) -> Iterator[tuple[int, int, V]]:
        stack = [self.root]
        while stack:
            node = stack.pop()
            if node is None:
                continue
            if node.value is not None:
                yield node.key, node.bits, node.value
            stack.extend(reversed(node.children))

    def remove_where(self, pred: object) -> None:
        """Drop every value v with pred(v) true, then re-compress the trie."""
        assert callable(pred)
        self.root = self._prune(self.root, pred)

    def _prune(self, node: _Node[V] | None, pred: object) -> _Node[V] | None:
        assert callable(pred)
        if node is None:
            return None
        node.children[0] = self._prune(node.children[0], pred)
        node.children[1] = self._prune(node.children[1], pred)
        if node.value is not None and pred(node.value):
            node.value = None
        if node.value is None:
            kids = [c for c in node.children if c is not None]
            if not kids:
                return None
            if len(kids) == 1:
                return kids[0]
        return node


class AllowedIPs(Generic[V]):
    """Longest-prefix map from IPv4/IPv6 networks to values (peers)."""

    __slots__ = ("_v4", "_v6")

    def __init__(self) -> None:
        self._v4: _Trie[V] = _Trie(32)
        self._v6: _Trie[V] = _Trie(128)

    def insert(self, network: IPNetwork | str, value: V) -> None:
        net = ipaddress.ip_network(network, strict=False)
        trie = self._v4 if net.version == 4 else self._v6
        trie.insert(int(net.network_address), net.prefixlen, value)

    def lookup(self, address: bytes) -> V | None:
        """Longest-prefix match of a raw 4- or 16-byte address; None for other lengths."""
        n = len(address)
        if n == 4:
            return self._v4.lookup(int.from_bytes(address, "big"))
        if n == 16:
            return self._v6.lookup(int.from_bytes(address, "big"))
        return None

    def exact(self, network: IPNetwork | str) -> V | None:
        net = ipaddress.ip_network(network, strict=False)
        trie = self._v4 if net.version == 4 else self._v6
        return trie.exact(int(net.network_address), net.prefixlen)

    def remove_value(self, value: V) -> None:
        """Remove every network that maps to value."""
        self._v4.remove_where(lambda v: v is value)
        self._v6.remove_where(lambda v: v is value)

    def networks_of(self, value: V) -> list[IPNetwork]:
        out: list[IPNetwork] = []
        for key, bits, v in self._v4.items():
            if v is value:
                out.append(ipaddress.IPv4Network((key, bits)))
        for key, bits, v in self._v6.items():
            if v is value:
                out.append(ipaddress.IPv6Network((key, bits)))
        return out

    def entries(self) -> list[tuple[bytes, int, V]]:
        """(raw network address, prefix length, value) of every network, IPv4 first."""
        out: list[tuple[bytes, int, V]] = []
        for trie, size in ((self._v4, 4), (self._v6, 16)):
            for key, bits, v in trie.items():
                out.append((key.to_bytes(size, "big"), bits, v))
        return out

    def items(self) -> list[tuple[IPNetwork, V]]:
        out: list[tuple[IPNetwork, V]] = []
        for key, bits, v in self._v4.items():
            out.append((ipaddress.IPv4Network((key, bits)), v))
        for key, bits, v in self._v6.items():
            out.append((ipaddress.IPv6Network((key, bits)), v))
        return out
