"""The pure parts of process supervision and reconnects: restart decisions, backoff, secrets kept out of text."""

from __future__ import annotations

import pytest

from occ.backoff import Backoff
from occ.bus import BrokerAddress
from occ.config import Config, DatabaseConfig, MqttConfig
from occ.redact import redact_url
from occ.supervisor import (
    SERVICES,
    RestartPolicy,
    ServiceSpec,
    Stack,
    alerts_services,
    ingest_services,
    simulator_services,
)
from simulators.cli import demo_argv


def test_backoff_grows_to_its_cap_and_starts_over_after_reset() -> None:
    backoff = Backoff(0.5, 8.0, jitter=0.0)
    assert [backoff.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    backoff.reset()
    assert backoff.next() == 0.5


@pytest.mark.parametrize("draw", [0.0, 0.5, 0.999999])
def test_backoff_jitter_stays_within_its_band_and_under_the_cap(draw: float) -> None:
    backoff = Backoff(1.0, 4.0, jitter=0.5, rng=lambda: draw)
    delays = [backoff.next() for _ in range(5)]
    nominal = [1.0, 2.0, 4.0, 4.0, 4.0]
    for delay, base in zip(delays, nominal, strict=True):
        assert base * 0.5 <= delay <= min(4.0, base * 1.5)


@pytest.mark.parametrize("code", [0, -15, -2, -1, 143, 130])
def test_a_service_that_was_told_to_stop_is_not_restarted(code: int) -> None:
    """Exit 0, or death by SIGTERM/SIGINT/SIGHUP, means it was told to stop (issue 12 item 5: "ingest-1 exited
    with code 0 after 1758 s; restarting")."""
    policy = RestartPolicy(rng=lambda: 0.5)
    assert policy.on_exit(code, ran_s=1758) is None


@pytest.mark.parametrize("code", [1, 2, -9, -11, 137])
def test_a_crash_is_restarted(code: int) -> None:
    assert RestartPolicy(rng=lambda: 0.5).on_exit(code, ran_s=5) == 0.5


def test_crashes_restart_with_growing_delays_that_start_over_after_a_long_run() -> None:
    policy = RestartPolicy(base_s=0.5, cap_s=4.0, healthy_after_s=60, rng=lambda: 0.5)
    quick = [policy.on_exit(1, ran_s=2) for _ in range(5)]
    assert quick == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert policy.on_exit(-9, ran_s=3600) == 0.5  # it ran for an hour: a fresh crash, not a crash loop


def test_servers_are_restarted_even_after_a_clean_exit() -> None:
    policy = RestartPolicy(restart_clean_exit=True, base_s=0.25, rng=lambda: 0.5)
    assert policy.on_exit(0, ran_s=10) == 0.25


def test_services_are_a_table_that_builds_specs_from_the_stack() -> None:
    stack = Stack(database_url="postgresql://x/occ", mqtt_url="mqtt://127.0.0.1:1", mqtt_services_url="mqtt://127.0.0.1:2",
                  env={}, config=Config(), demo=True, workers=3)
    assert ingest_services in SERVICES and simulator_services in SERVICES
    ingest = ingest_services(stack)
    assert [s.name for s in ingest] == ["ingest-1", "ingest-2", "ingest-3"]
    assert len({s.http_port for s in ingest}) == 3
    assert all(s.health_url == f"http://127.0.0.1:{s.http_port}/healthz" for s in ingest)
    assert {s.env["OCC_INGEST__CLIENT_ID"] for s in ingest} == {"occ-ingest-1", "occ-ingest-2", "occ-ingest-3"}
    (sim,) = simulator_services(stack)
    assert sim.env["OCC_MQTT_URL"] == "mqtt://127.0.0.1:1"  # devices' listener, not the services' one
    assert sim.health_url is None
    # the demo scenario, forever, in one simulator process; the same arguments as simulators.cli.demo_argv
    assert sim.args == ("simulate", *demo_argv(speed=stack.speed, config_dir=str(stack.config.config_path)))
    (alerts,) = alerts_services(stack)
    assert alerts.env["OCC_ALERTS__CLOCK"] == "event"  # the replayed day is hours old by the wall clock
    (alerts,) = alerts_services(Stack("d", "m", "s", {}, Config(), demo=False))
    assert "OCC_ALERTS__CLOCK" not in alerts.env
    assert simulator_services(Stack("d", "m", "s", {}, Config(), demo=False)) == []
    assert ServiceSpec("x", ("x",)).metrics_url is None


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://occ:s3cr%40t@db.example:5432/occ", "postgresql://occ:***@db.example:5432/occ"),
    ("mqtts://ingest:hunter2@broker:8883", "mqtts://ingest:***@broker:8883"),
    ("postgresql://postgres@127.0.0.1:5432/occ", "postgresql://postgres@127.0.0.1:5432/occ"),
    ("mqtt://127.0.0.1:1883", "mqtt://127.0.0.1:1883"),
])
def test_urls_are_shown_without_their_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_secrets_never_appear_in_reprs() -> None:
    address = BrokerAddress.parse("mqtt://ingest:hunter2@broker:1883")
    assert address.password == "hunter2"
    assert "hunter2" not in repr(address) and "hunter2" not in str(address)
    config = Config(database=DatabaseConfig(url="postgresql://occ:s3cret@db/occ"),
                    mqtt=MqttConfig(url="mqtt://svc:hunter2@broker:1883"))
    assert "s3cret" not in repr(config) and "hunter2" not in repr(config)
    assert "db/occ" in repr(config.database)


def test_only_a_second_ctrl_c_hurries_the_stop() -> None:
    """`kill -TERM -- -<group>` of `make run` reaches `occ up` twice (directly and through make): that must not
    skip the services' drain the way a person's second Ctrl-C does."""
    import signal

    from occ.supervisor import Supervisor

    patient = Supervisor(Config())
    patient.request_stop(signal.SIGTERM)
    patient.request_stop(signal.SIGTERM)
    assert patient.stop_requested and not patient._hurry
    impatient = Supervisor(Config())
    impatient.request_stop(signal.SIGINT)
    impatient.request_stop(signal.SIGINT)
    assert impatient._hurry
