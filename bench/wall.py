"""Wall page benchmark: `python -m bench.wall` (issue 10, "clustering that stays smooth at 5,000 devices").

The real page (`web/static/wall.js`, Leaflet + markercluster) in Debian's headless Chromium (Playwright with
`executable_path`, never a downloaded browser), against a real `occ web` process, embedded PostgreSQL and
Mosquitto, with `--devices` hydromet stations spread over the province:

  first render   from navigation to the kiosk page to every marker in the cluster layer and the next frame
                 painted (with the snapshot's arrival and its size on the way)
  live updates   while a publisher sends one reading per device per 10 s on average and, half way, a storm of
                 200 alert changes within one second (the same load as bench.ws): the page's frame intervals
                 (requestAnimationFrame), long tasks (> 50 ms), time spent applying deltas and refreshing
                 markers, the alerts that reached the page, and the browser's CPU

Measuring hooks are installed from outside (an init script and wrappers around the page's global functions);
the page itself is served unchanged. The last line is a JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import machine_busy_s, machine_info, tree_cpu_s
from bench.ws import ROOT, setup_store, start_server, wait_port

CHROMIUM = Path(os.environ.get("OCC_TEST_CHROMIUM", "/usr/bin/chromium"))
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]


def log(message: str) -> None:
    print(f"[bench.wall {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


INIT_SCRIPT = """
(() => {
  const probe = window.__probe = { snapshotAt: null, snapshotBytes: 0, loadedAt: null, paintedAt: null,
                                   frames: [], longTasks: [], recording: false };
  const Native = window.WebSocket;
  function Probed(...args) {
    const ws = new Native(...args);
    ws.addEventListener("message", (event) => {  // registered before the page's onmessage: runs first
      if (probe.snapshotAt === null && typeof event.data === "string" && event.data.startsWith('{"type":"snapshot"')) {
        probe.snapshotAt = performance.now();
        probe.snapshotBytes = event.data.length;
      }
    });
    return ws;
  }
  Probed.prototype = Native.prototype;
  for (const k of ["CONNECTING", "OPEN", "CLOSING", "CLOSED"]) Probed[k] = Native[k];
  window.WebSocket = Probed;
  const want = %(devices)d;
  let last = null;
  function frame(now) {
    if (probe.loadedAt === null && typeof cluster !== "undefined" && cluster.getLayers().length >= want) {
      probe.loadedAt = performance.now();
    } else if (probe.loadedAt !== null && probe.paintedAt === null) {
      probe.paintedAt = now;  // the first frame after the last marker joined the layer
    }
    if (probe.recording && last !== null) probe.frames.push([now - probe.t0, now - last]);
    last = now;
    requestAnimationFrame(frame);
  }
  requestAnimationFrame(frame);
  try {
    new PerformanceObserver((list) => {
      if (!probe.recording) return;
      for (const e of list.getEntries()) probe.longTasks.push(e.duration);
    }).observe({ type: "longtask", buffered: false });
  } catch (e) { probe.longTaskError = String(e); }
})();
"""

WRAP_SCRIPT = """
() => {
  const probe = window.__probe;
  probe.apply = []; probe.refresh = [];
  const wrap = (name, into) => {
    const inner = window[name];
    window[name] = function (...args) {
      const t0 = performance.now();
      try { return inner.apply(this, args); } finally { into.push(performance.now() - t0); }
    };
  };
  wrap("applyDelta", probe.apply);
  wrap("refreshMarkers", probe.refresh);
  probe.t0 = performance.now();
  probe.recording = true;
}
"""

COUNT_SCRIPT = """
() => {
  let clustered = 0;
  document.querySelectorAll(".cluster").forEach((el) => { clustered += Number(el.textContent); });
  return { cluster_icons: document.querySelectorAll(".cluster").length, clustered,
           single_markers: document.querySelectorAll(".dev").length, devices: state.devices.size,
           open_alerts: state.alerts.size,
           coloured: document.querySelectorAll(".dev[class*=sev-], .cluster[class*=sev-]").length };
}
"""


def _stats(values: Sequence[float]) -> dict[str, Any]:
    from bench.common import percentile

    if not values:
        return {"n": 0}
    return {"n": len(values), "mean_ms": round(sum(values) / len(values), 2),
            "p50_ms": round(percentile(values, 50), 2), "p99_ms": round(percentile(values, 99), 2),
            "max_ms": round(max(values), 2), "total_ms": round(sum(values), 1)}


def _profile_top(profile: dict[str, Any], top: int = 15) -> list[dict[str, Any]]:
    """Self time by function from a CDP CPU profile (sampled), largest first."""
    nodes = {n["id"]: n for n in profile["nodes"]}
    samples = profile.get("samples", [])
    deltas = profile.get("timeDeltas", [])
    self_us: dict[str, float] = {}
    for node_id, delta in zip(samples, deltas, strict=False):
        frame = nodes[node_id]["callFrame"]
        name = frame["functionName"] or "(anonymous)"
        where = frame["url"].rsplit("/", 1)[-1]
        key = f"{name} {where}:{frame['lineNumber'] + 1}" if where else name
        self_us[key] = self_us.get(key, 0.0) + delta
    ranked = sorted(self_us.items(), key=lambda kv: -kv[1])[:top]
    return [{"function": k, "self_ms": round(v / 1000, 1)} for k, v in ranked]


def _trace_top(raw: bytes, top: int = 15) -> list[dict[str, Any]]:
    """Time by event name on the renderer's main thread (complete events; nested ones overlap their parents)."""
    events = json.loads(raw)
    events = events["traceEvents"] if isinstance(events, dict) else events
    main = {(e["pid"], e["tid"]) for e in events
            if e.get("ph") == "M" and e.get("name") == "thread_name" and e["args"].get("name") == "CrRendererMain"}
    total: dict[str, float] = {}
    for e in events:
        if e.get("ph") == "X" and (e.get("pid"), e.get("tid")) in main and "dur" in e:
            total[e["name"]] = total.get(e["name"], 0.0) + e["dur"]
    ranked = sorted(total.items(), key=lambda kv: -kv[1])[:top]
    return [{"event": k, "ms": round(v / 1000, 1)} for k, v in ranked]


async def measure(origin: str, token: str, devices: int, mqtt_url: str, duration: float, storm: int,
                  interval: float, shots: Path | None, profile: str | None = None) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    out: dict[str, Any] = {}
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1920, "height": 1080})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.add_init_script(INIT_SCRIPT % {"devices": devices})
            await page.goto(f"{origin}/kiosk?token={token}")
            await page.wait_for_function("window.__probe && window.__probe.paintedAt !== null", timeout=180_000)
            probe = await page.evaluate("""() => ({ ...window.__probe, frames: undefined, longTasks: undefined,
                nav: performance.getEntriesByType('navigation').map(e => e.toJSON()) })""")
            nav = probe["nav"][-1] if probe["nav"] else {}
            out["first_render"] = {
                "devices": devices,
                "snapshot_bytes": probe["snapshotBytes"],
                "dom_content_loaded_ms": round(nav.get("domContentLoadedEventEnd", 0), 1),
                "snapshot_received_ms": round(probe["snapshotAt"], 1),
                "markers_in_layer_ms": round(probe["loadedAt"], 1),
                "painted_ms": round(probe["paintedAt"], 1),
                "snapshot_to_painted_ms": round(probe["paintedAt"] - probe["snapshotAt"], 1),
            }
            await asyncio.sleep(1.0)
            out["after_load"] = await page.evaluate(COUNT_SCRIPT)
            if shots:
                await asyncio.to_thread(shots.mkdir, parents=True, exist_ok=True)
                await page.screenshot(path=str(shots / "wall-5000-loaded.png"))
            log(f"first render: {out['first_render']}")
            await page.evaluate(WRAP_SCRIPT)
            cdp = None
            if profile == "trace":
                await browser.start_tracing(page=page, categories=["devtools.timeline"])
            elif profile == "js":
                cdp = await page.context.new_cdp_session(page)
                await cdp.send("Profiler.enable")
                await cdp.send("Profiler.setSamplingInterval", {"interval": 500})
                await cdp.send("Profiler.start")
            children = os.getpid()
            cpu0, busy0, t0 = tree_cpu_s(children), machine_busy_s(), time.monotonic()
            publisher = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.ws", "--publisher", mqtt_url, str(devices), str(interval), str(duration),
                str(storm), str(duration / 2), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            stdout, _ = await publisher.communicate()
            await asyncio.sleep(1.5)
            cpu1, busy1, t1 = tree_cpu_s(children), machine_busy_s(), time.monotonic()
            data = await page.evaluate("""() => { const p = window.__probe; p.recording = false;
                return { frames: p.frames, longTasks: p.longTasks, apply: p.apply, refresh: p.refresh,
                         longTaskError: p.longTaskError || null }; }""")
            if cdp is not None:
                cpu_profile = (await cdp.send("Profiler.stop"))["profile"]
                out["profile_top"] = _profile_top(cpu_profile)
            if profile == "trace":
                out["trace_top"] = _trace_top(await browser.stop_tracing())
            sent = json.loads(stdout.decode().strip().splitlines()[-1]) if stdout.strip() else {}
            frames = [f[1] for f in data["frames"]]
            storm_ms = 1000 * duration / 2
            calm = [f[1] for f in data["frames"] if f[0] < storm_ms]
            after = [f[1] for f in data["frames"] if f[0] >= storm_ms]
            out["updates"] = {
                "published_readings": sent.get("readings"), "published_alerts": sent.get("alerts"),
                "seconds": round(t1 - t0, 1),
                "frame_interval": _stats(frames),
                "frames_over_50ms": sum(1 for f in frames if f > 50),
                "frames_over_100ms": sum(1 for f in frames if f > 100),
                "frame_interval_before_storm": _stats(calm),
                "frame_interval_from_storm_on": _stats(after),
                "fps": round(len(frames) / (t1 - t0), 1),
                "long_tasks": _stats(data["longTasks"]),
                "apply_delta": _stats(data["apply"]),
                "refresh_markers": _stats(data["refresh"]),
                "browser_and_bench_cpu_pct": round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
                "machine_cpu_pct": round(100 * (busy1 - busy0) / (t1 - t0), 1),
                "long_task_error": data["longTaskError"],
            }
            out["after_updates"] = await page.evaluate(COUNT_SCRIPT)
            if shots:
                await page.screenshot(path=str(shots / "wall-5000-after-storm.png"))
            out["page_errors"] = errors[:5]
        finally:
            await browser.close()
    return out


def run(devices: int, duration: float, storm: int, interval: float, shots: Path | None,
        profile: str | None = None) -> dict[str, Any]:
    from occ.embedded import EmbeddedBroker, EmbeddedPostgres, free_port
    from occ.supervisor import _ensure_database

    base = Path(tempfile.mkdtemp(prefix="occ-bench-wall-", dir="/tmp"))
    base.chmod(0o755)
    postgres = EmbeddedPostgres(base / "pg", durable=False)
    broker = EmbeddedBroker(base / "broker", kind="auto")
    server: subprocess.Popen[bytes] | None = None
    try:
        admin = postgres.start()
        _ensure_database(admin, "occ")
        database_url = admin.rsplit("/", 1)[0] + "/occ"
        broker.start()
        token = asyncio.run(setup_store(database_url, devices))
        port = free_port()
        server = start_server("occ", port, database_url, broker.services_url)
        wait_port(port)
        time.sleep(1.0)
        log(f"{devices} devices; occ web on {port}")
        result = asyncio.run(measure(f"http://127.0.0.1:{port}", token, devices, broker.url, duration, storm, interval,
                                     shots, profile))
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
        broker.stop()
        postgres.stop(mode="immediate")
    return {"bench": "wall", "devices": devices, "readings_per_s": devices / interval, "storm_alerts": storm,
            **result, "machine": machine_info()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.wall", description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of live updates")
    parser.add_argument("--interval", type=float, default=10.0, help="mean seconds between readings per device")
    parser.add_argument("--storm", type=int, default=200, help="alert changes within one second, half way")
    parser.add_argument("--screenshots", type=Path, default=None, help="save screenshots in this folder")
    parser.add_argument("--out", help="also write the final JSON object to this file")
    parser.add_argument("--profile", choices=("js", "trace"), default=None,
                        help="during the updates, sample the page's JavaScript (js: top functions by self time) or "
                             "trace the renderer (trace: main-thread time by event); both cost CPU, so not for the "
                             "headline figures")
    args = parser.parse_args(argv)
    if not CHROMIUM.exists():
        print(f"bench.wall needs Chromium at {CHROMIUM} (apt-get install chromium)", file=sys.stderr)
        return 2
    result = run(args.devices, args.duration, args.storm, args.interval, args.screenshots, args.profile)
    line = json.dumps(result)
    if args.out:
        Path(args.out).write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
