"""`meshguard web` in a real browser (marked netns): headless chromium renders the page.

A 3-node mesh (meshnet.py): node `a` runs `meshguard web` in its namespace and chromium, in
the same namespace, loads the page and dumps the DOM its scripts built. Node `a` trusts `c`
under the name `<img src=x onerror=...>` (a trust file name is whatever its owner chose),
so the page must show that name as text. A second `meshguard web` asks for a daemon that is
not running: the page says so (docs/web.md).
"""

from __future__ import annotations

import base64
import contextlib
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser

import pytest

from meshguard.identity import store
from meshguard.testing.headless_chromium import chromium_skip_reason, dump_dom
from meshguard.testing.netns import netns_skip_reason

from .meshnet import MeshLan, Node, start_web, trust_all

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(netns_skip_reason() is not None, reason=str(netns_skip_reason())),
    pytest.mark.skipif(chromium_skip_reason() is not None, reason=str(chromium_skip_reason())),
]

XSS_NAME = "<img src=x onerror=document.title='owned'>"
PORT = 8385


class _Dom(HTMLParser):
    """The text under each element with a data-key, by (tag, key); every tag seen."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.keyed: dict[tuple[str, str], str] = {}
        self.tags: list[str] = []
        self.ids: dict[str, str] = {}
        self._open: list[tuple[str, tuple[str, str] | None, str | None]] = []
        self._text: dict[int, list[str]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        a = dict(attrs)
        key = a.get("data-key")
        cls = a.get("class") or ""
        keyed = (tag, key) if key and (tag == "tr" or "node" in cls.split()) else None
        self._open.append((tag, keyed, a.get("id")))
        self._text[len(self._open)] = []

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            t, keyed, ident = self._open.pop()
            text = " ".join(self._text.pop(len(self._open) + 1, []))
            if self._open:
                self._text[len(self._open)].append(text)
            if keyed is not None:
                self.keyed[keyed] = text
            if ident is not None:
                self.ids[ident] = text
            if t == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._open and data.strip():
            self._text[len(self._open)].append(data.strip())


@dataclass
class Web:
    lan: MeshLan
    a: Node
    b: Node
    c: Node
    raw: str
    dom: _Dom


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web]:
    tmp = tmp_path_factory.mktemp("web")
    with MeshLan(tmp) as lan:
        a, b, c = (lan.add_node(n) for n in ("a", "b", "c"))
        trust_all([a, b, c])
        trusted = a.cfg / store.AUTHORIZED_KEYS
        (trusted / "c.pub").rename(trusted / f"{XSS_NAME}.pub")
        a.up()
        for n in (b, c):
            n.up([a], wait=False)
        for n in (b, c):
            lan.wait(n.alive_and_answering, f"{n.name} up", 20)
        for n in (b, c):
            lan.wait(lambda n=n: a.tunnel_to(n) and a.member(n)["last_handshake"],
                     f"a's handshake with {n.name}", 25)
        start_web(a, PORT)
        profile = tmp / "chromium"
        try:
            raw = dump_dom(a.ns, f"http://127.0.0.1:{PORT}/", profile, budget_ms=1500)
        finally:
            with contextlib.suppress(OSError):
                shutil.rmtree(profile)
        dom = _Dom()
        dom.feed(raw)
        yield Web(lan, a, b, c, raw, dom)


def test_the_table_lists_every_member(web: Web) -> None:
    for node, name in ((web.b, "b"), (web.c, XSS_NAME)):
        row = web.dom.keyed.get(("tr", _b64(node.identity)))
        assert row is not None, f"no row for {name}:\n{web.raw}"
        assert row.startswith(name), row
        assert node.mesh_v4 in row and node.mesh_v6 in row, row
        assert "alive" in row and "direct" in row, row
    rows = [k for k in web.dom.keyed if k[0] == "tr"]
    assert len(rows) == 2, rows


def test_the_graph_shows_this_node_and_every_member(web: Web) -> None:
    for node, name in ((web.a, "a"), (web.b, "b"), (web.c, XSS_NAME)):
        g = web.dom.keyed.get(("g", _b64(node.identity)))
        assert g is not None, f"no graph node for {node.name}:\n{web.raw}"
        assert node.mesh_v4 in g, g
        if node is not web.a:
            assert name in g, g
    # one solid edge to each member, labelled with its RTT once a probe has measured it
    assert web.raw.count('class="edge direct st-alive"') == 2, web.raw


def test_the_header_shows_this_node(web: Web) -> None:
    header = web.dom.ids.get("self", "")
    assert _b64(web.a.identity) in header and web.a.mesh_v4 in header, header
    assert web.dom.ids.get("counts", "").startswith("2 members"), web.dom.ids
    assert "live" in web.dom.ids.get("conn", ""), web.dom.ids


def test_a_hostile_member_name_is_shown_as_text(web: Web) -> None:
    assert "img" not in web.dom.tags, "the member name became an element"
    title = re.search(r"<title>(.*?)</title>", web.raw)
    assert title is not None and title.group(1) == f"meshguard {web.a.iface}", title
    assert "&lt;img src=x onerror=" in web.raw  # serialized as text, in the table and graph


def test_without_a_daemon_the_page_says_so(web: Web) -> None:
    start_web(web.a, PORT + 1, iface="mgnone0")
    profile = web.lan.tmp / "chromium-none"
    dom = _Dom()
    dom.feed(dump_dom(web.a.ns, f"http://127.0.0.1:{PORT + 1}/", profile, budget_ms=1200))
    assert "daemon not reachable" in dom.ids.get("conn", ""), dom.ids
    assert "mgnone0" in dom.ids.get("conn", ""), dom.ids
