"""Node configuration: a TOML file (conf/prkdb.toml documents every key) + CLI overrides.

`NodeConfig.from_toml(path)` parses and validates; every error names the file,
the key and the value, so an operator can fix it without reading code:

    conf/node1.toml: raft.election_ticks = 2 must be > raft.heartbeat_ticks = 2

`NodeConfig.default()` is a single-node cluster on 127.0.0.1:8080 with its
data in ./prkdb-data — what `prkdb serve` runs with no config.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from prkdb.partitioning import KEY_RULES


class ConfigError(ValueError):
    """The configuration is invalid; the message names the file, key and value."""


@dataclass(frozen=True, slots=True)
class PeerConfig:
    id: int
    client_addr: str  # host:port clients connect to
    peer_addr: str  # host:port other nodes connect to


DEFAULT_PEERS = (PeerConfig(1, "127.0.0.1:8080", "127.0.0.1:9080"),)


@dataclass(frozen=True, slots=True)
class RaftSettings:
    tick_ms: int = 50
    heartbeat_ticks: int = 2
    election_ticks: int = 10
    pre_vote: bool = True
    check_quorum: bool = True
    max_size_per_msg: int = 1024 * 1024
    max_inflight_msgs: int = 256
    # Take a snapshot (and compact the log) every this many applied entries.
    snapshot_entries: int = 10_000


@dataclass(frozen=True, slots=True)
class StorageSettings:
    segment_size: int = 64 * 1024 * 1024
    # false = do not fsync: an acknowledged write may be lost on power failure.
    # Named in every log line at start; never the default.
    unsafe_no_fsync: bool = False
    # true = fdatasync in a helper thread while the event loop goes on reading
    # connections; false = in the Raft loop itself, which waits for it anyway
    # (cheaper: no thread hand-off per sync; measured in docs/benchmarks.md).
    sync_thread: bool = False


@dataclass(frozen=True, slots=True)
class LimitSettings:
    max_frame: int = 16 * 1024 * 1024
    # Frames between nodes carry whole snapshots, so they may be larger (a
    # peer has proven its cluster id and node id before it may send one).
    max_peer_frame: int = 1024 * 1024 * 1024
    max_key_size: int = 64 * 1024
    max_value_size: int = 4 * 1024 * 1024
    max_batch_ops: int = 1000
    # Default server-side deadline for a request, in seconds.
    request_timeout: float = 5.0
    # Most keys in one scan page (a Scan asking for more, or for 0, gets this many).
    max_scan_page: int = 1000
    # A scan page stops before this many bytes of keys + values (at least one key).
    max_scan_bytes: int = 4 * 1024 * 1024
    # Most leases one partition holds; a grant beyond it fails (TOO_MANY_LEASES).
    max_leases: int = 100_000
    # A lease granted with a shorter TTL gets this one, in milliseconds. Must
    # exceed the election timeout: a new leader restarts every TTL, so a
    # shorter one could lapse before its owner found the new leader.
    min_lease_ttl_ms: int = 2000
    # A watch whose client fell this many events (or bytes of keys and values)
    # behind is ended with WATCH_OVERFLOW; the client resumes from its cursor.
    watch_buffer_events: int = 10_000
    watch_buffer_bytes: int = 4 * 1024 * 1024
    # Most watches open on one client connection.
    max_watches_per_connection: int = 10_000
    # Recent events each partition keeps for watches resuming from a cursor
    # (fewer events or bytes, whichever bound is reached first); an older
    # cursor gets COMPACTED.
    history_events: int = 10_000
    history_bytes: int = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """``[tls]``: certificates for the client and peer listeners (off when cert_file is "")."""

    # PEM files; relative paths resolve against the config file's directory.
    cert_file: str = ""  # this node's certificate chain (both listeners; dialing peers)
    key_file: str = ""  # its private key
    ca_file: str = ""  # CAs trusted for peer certificates and client certificates
    # Clients must present a certificate signed by ca_file (with auth on, its CN is the user).
    client_cert_auth: bool = False
    min_version: str = "1.2"  # "1.2" or "1.3"

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file)


MAX_TOKEN_TTL_S: Final = 7 * 24 * 3600  # a token lasts at most a week


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """``[auth]``: users, roles and tokens (issue 18)."""

    enabled: bool = False
    # First line = the root user's password, read at first start when the
    # cluster has no root user yet (`prkdb auth init` writes one).
    root_password_file: str = ""
    token_ttl_s: int = 600  # a login's token lasts this long; the SDKs log in again
    failed_logins_per_minute: int = 10  # per source address; then AUTH_FAILED with retry_after


@dataclass(frozen=True, slots=True)
class NodeConfig:
    node_id: int = 1
    cluster_id: str = "prkdb"
    data_dir: Path = Path("prkdb-data")
    partitions: int = 8
    # "hashtag" or "crc32" (prkdb.partitioning); "" = not set: a new data dir
    # takes "hashtag", an existing one keeps the rule it recorded.
    key_rule: str = ""
    peers: tuple[PeerConfig, ...] = DEFAULT_PEERS
    raft: RaftSettings = field(default_factory=RaftSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    # Listen on non-loopback addresses without TLS and auth (logged at start).
    insecure: bool = False
    log_format: str = "json"  # or "console"
    log_level: str = "info"
    source: str = "<defaults>"  # the file this came from, for error messages

    @classmethod
    def default(cls) -> NodeConfig:
        return cls()

    @property
    def me(self) -> PeerConfig:
        for p in self.peers:
            if p.id == self.node_id:
                return p
        raise ConfigError(f"{self.source}: node.id = {self.node_id} is not in [[peers]]")

    @property
    def voter_ids(self) -> tuple[int, ...]:
        return tuple(sorted(p.id for p in self.peers))

    def peer(self, node_id: int) -> PeerConfig | None:
        for p in self.peers:
            if p.id == node_id:
                return p
        return None

    @classmethod
    def from_toml(cls, path: str | Path) -> NodeConfig:
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: cannot read: {e}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "<dict>") -> NodeConfig:
        r = _Reader(raw, source)
        node = r.table("node")
        cfg = cls(
            node_id=r.int(node, "node.id", 1, lo=1),
            cluster_id=r.text(node, "node.cluster_id", "prkdb"),
            data_dir=Path(r.text(node, "node.data_dir", "prkdb-data")),
            partitions=r.int(r.table("cluster"), "cluster.partitions", 8, lo=1, hi=1024),
            key_rule=r.text(r.table("cluster"), "cluster.key_rule", ""),
            peers=_read_peers(r),
            raft=r.section("raft", RaftSettings),
            storage=r.section("storage", StorageSettings),
            limits=r.section("limits", LimitSettings),
            tls=r.section("tls", TlsSettings),
            auth=r.section("auth", AuthSettings),
            insecure=r.bool(node, "node.insecure", False),
            log_format=r.text(r.table("log"), "log.format", "json"),
            log_level=r.text(r.table("log"), "log.level", "info"),
            source=source,
        )
        r.reject_unknown()
        cfg.validate()
        return cfg

    def resolve(self, path: str) -> Path:
        """A file named in this config: relative paths are relative to the config file's dir."""
        p = Path(path)
        if p.is_absolute() or self.source.startswith("<"):
            return p
        return Path(self.source).parent / p

    def replace(self, **changes: Any) -> NodeConfig:
        return dataclasses.replace(self, **changes)

    def validate(self) -> NodeConfig:
        """Raise `ConfigError` for the first inconsistent value; returns self."""
        s = self.source
        rf = self.raft
        if not self.cluster_id:
            raise ConfigError(f"{s}: node.cluster_id must not be empty")
        if self.key_rule and self.key_rule not in KEY_RULES:
            raise ConfigError(
                f"{s}: cluster.key_rule = {self.key_rule!r} must be one of "
                f"{', '.join(map(repr, KEY_RULES))} (or left out)"
            )
        if rf.election_ticks <= rf.heartbeat_ticks:
            raise ConfigError(
                f"{s}: raft.election_ticks = {rf.election_ticks} must be > "
                f"raft.heartbeat_ticks = {rf.heartbeat_ticks}"
            )
        for name in ("tick_ms", "heartbeat_ticks", "max_size_per_msg", "max_inflight_msgs",
                     "snapshot_entries"):
            if getattr(rf, name) <= 0:
                raise ConfigError(f"{s}: raft.{name} = {getattr(rf, name)} must be > 0")
        if self.storage.segment_size < 1 << 20:
            raise ConfigError(
                f"{s}: storage.segment_size = {self.storage.segment_size} must be >= 1048576"
            )
        lim = self.limits
        if lim.max_peer_frame < lim.max_frame:
            raise ConfigError(
                f"{s}: limits.max_peer_frame = {lim.max_peer_frame} must be >= "
                f"limits.max_frame = {lim.max_frame}"
            )
        for name in ("max_frame", "max_key_size", "max_value_size", "max_batch_ops",
                     "max_scan_page", "max_scan_bytes", "max_leases", "min_lease_ttl_ms",
                     "watch_buffer_events", "watch_buffer_bytes", "max_watches_per_connection",
                     "history_events", "history_bytes"):
            if getattr(lim, name) <= 0:
                raise ConfigError(f"{s}: limits.{name} = {getattr(lim, name)} must be > 0")
        if lim.request_timeout <= 0:
            raise ConfigError(f"{s}: limits.request_timeout = {lim.request_timeout} must be > 0")
        election_ms = rf.election_ticks * rf.tick_ms
        if lim.min_lease_ttl_ms <= election_ms:
            raise ConfigError(
                f"{s}: limits.min_lease_ttl_ms = {lim.min_lease_ttl_ms} must be > the election "
                f"timeout (raft.election_ticks * raft.tick_ms = {election_ms} ms)"
            )
        if lim.max_value_size + lim.max_key_size + 1024 > lim.max_frame:
            raise ConfigError(
                f"{s}: limits.max_frame = {lim.max_frame} must exceed max_key_size + "
                f"max_value_size ({lim.max_key_size + lim.max_value_size}) + 1024"
            )
        if self.log_format not in ("json", "console"):
            raise ConfigError(f"{s}: log.format = {self.log_format!r} must be json or console")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError(
                f"{s}: log.level = {self.log_level!r} must be debug, info, warning or error"
            )
        self._validate_tls()
        self._validate_auth()
        ids = [p.id for p in self.peers]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"{s}: peers has duplicate ids {sorted(ids)}")
        if len(self.peers) not in (1, 3, 5, 7):
            raise ConfigError(
                f"{s}: a cluster has 1, 3, 5 or 7 nodes, [[peers]] lists {len(self.peers)}"
            )
        addrs = [a for p in self.peers for a in (p.client_addr, p.peer_addr)]
        if len(set(addrs)) != len(addrs):
            raise ConfigError(f"{s}: peers reuse an address: {addrs}")
        for p in self.peers:
            for key, addr in (("client", p.client_addr), ("peer", p.peer_addr)):
                parse_addr(addr, f"{s}: peers[id={p.id}].{key}")
        self.me  # noqa: B018 - raises if node.id is not a peer
        return self


    def _validate_tls(self) -> None:
        """``[tls]``: the files that go together, and a known min_version (files load at start)."""
        s, t = self.source, self.tls
        if t.min_version not in ("1.2", "1.3"):
            raise ConfigError(
                f"{s}: tls.min_version = {t.min_version!r} must be \"1.2\" or \"1.3\"")
        if not t.enabled:
            for name in ("key_file", "ca_file"):
                if getattr(t, name):
                    raise ConfigError(f"{s}: tls.{name} is set but tls.cert_file is not "
                                      "(TLS needs this node's certificate)")
            if t.client_cert_auth:
                raise ConfigError(f"{s}: tls.client_cert_auth = true needs tls.cert_file, "
                                  "tls.key_file and tls.ca_file")
            return
        if not t.key_file:
            raise ConfigError(f"{s}: tls.cert_file is set but tls.key_file is not")
        if not t.ca_file and t.client_cert_auth:
            raise ConfigError(f"{s}: tls.client_cert_auth = true needs tls.ca_file "
                              "(the CA that signs client certificates)")
        if not t.ca_file and len(self.peers) > 1:
            raise ConfigError(f"{s}: tls.ca_file is required in a cluster of {len(self.peers)} "
                              "nodes (peers check each other's certificates with it)")

    def _validate_auth(self) -> None:
        """``[auth]``: a root password file when on, a sane token TTL and login limit."""
        s, a = self.source, self.auth
        if not 0 < a.token_ttl_s <= MAX_TOKEN_TTL_S:
            raise ConfigError(f"{s}: auth.token_ttl_s = {a.token_ttl_s} must be in "
                              f"1..{MAX_TOKEN_TTL_S} (seconds)")
        if a.failed_logins_per_minute < 1:
            raise ConfigError(f"{s}: auth.failed_logins_per_minute = "
                              f"{a.failed_logins_per_minute} must be >= 1")
        if a.enabled and not a.root_password_file:
            raise ConfigError(f"{s}: auth.enabled = true needs auth.root_password_file (the "
                              "root user's password at first start; `prkdb auth init "
                              "--config FILE` writes one)")


def parse_addr(addr: str, where: str = "address") -> tuple[str, int]:
    """'host:port' -> (host, port); raises ConfigError naming `where`."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{where} = {addr!r} must be host:port with a port in 1..65535")
    return host.strip("[]"), int(port)


def _read_peers(r: _Reader) -> tuple[PeerConfig, ...]:
    raw = r.raw.pop("peers", None)
    if raw is None:
        return DEFAULT_PEERS
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{r.source}: peers must be a non-empty array of tables ([[peers]])")
    peers = []
    for i, t in enumerate(raw):
        if not isinstance(t, dict):
            raise ConfigError(f"{r.source}: peers[{i}] must be a table")
        t = dict(t)
        pid = r.int(t, f"peers[{i}].id", None, lo=1)
        client = r.text(t, f"peers[{i}].client", None)
        peer = r.text(t, f"peers[{i}].peer", None)
        if t:
            raise ConfigError(f"{r.source}: unknown key peers[{i}].{sorted(t)[0]}")
        peers.append(PeerConfig(pid, client, peer))
    return tuple(sorted(peers, key=lambda p: p.id))


class _Reader:
    """Pops typed values out of the raw TOML dict, so leftovers are unknown keys."""

    def __init__(self, raw: dict[str, Any], source: str) -> None:
        self.raw = dict(raw)
        self.source = source
        self._tables: dict[str, dict[str, Any]] = {}

    def table(self, name: str) -> dict[str, Any]:
        if name not in self._tables:
            t = self.raw.pop(name, {})
            if not isinstance(t, dict):
                raise ConfigError(f"{self.source}: {name} must be a table ([{name}])")
            self._tables[name] = dict(t)
        return self._tables[name]

    def _get(self, t: dict[str, Any], key: str, default: Any) -> Any:
        short = key.rsplit(".", 1)[-1]
        if short in t:
            return t.pop(short)
        if default is None:
            raise ConfigError(f"{self.source}: {key} is required")
        return default

    def int(self, t: dict[str, Any], key: str, default: Any, lo: int | None = None,
            hi: int | None = None) -> int:
        v = self._get(t, key, default)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{self.source}: {key} = {v!r} must be an integer")
        if lo is not None and v < lo:
            raise ConfigError(f"{self.source}: {key} = {v} must be >= {lo}")
        if hi is not None and v > hi:
            raise ConfigError(f"{self.source}: {key} = {v} must be <= {hi}")
        return v

    def bool(self, t: dict[str, Any], key: str, default: Any) -> bool:
        v = self._get(t, key, default)
        if not isinstance(v, bool):
            raise ConfigError(f"{self.source}: {key} = {v!r} must be true or false")
        return v

    def text(self, t: dict[str, Any], key: str, default: Any) -> str:
        v = self._get(t, key, default)
        if not isinstance(v, str):
            raise ConfigError(f"{self.source}: {key} = {v!r} must be a string")
        return v

    def section(self, name: str, cls: type) -> Any:
        t = self.table(name)
        kw: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in t:
                continue
            v = t.pop(f.name)
            want = type(f.default)
            ok = isinstance(v, want) and not (want is int and isinstance(v, bool))
            if want is float and isinstance(v, int) and not isinstance(v, bool):
                v, ok = float(v), True
            if not ok:
                raise ConfigError(
                    f"{self.source}: {name}.{f.name} = {v!r} must be of type {want.__name__}"
                )
            kw[f.name] = v
        if t:
            raise ConfigError(f"{self.source}: unknown key {name}.{sorted(t)[0]}")
        return cls(**kw)

    def reject_unknown(self) -> None:
        for name, t in self._tables.items():
            if t:
                raise ConfigError(f"{self.source}: unknown key {name}.{sorted(t)[0]}")
        if self.raw:
            raise ConfigError(f"{self.source}: unknown key {sorted(self.raw)[0]}")
