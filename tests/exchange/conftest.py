"""Fixtures: real server processes on real gRPC ports (cleaned up by LocalCluster.stop)."""

import itertools
import os

import pytest

from exchange.cluster import LocalCluster
from traders.client import ClusterConnection, TraderClient

_client_ids = itertools.count((os.getpid() % 10_000) * 1_000 + 1)
# The instrument list of the test clusters: the servers' default list plus every symbol the
# tests send (an order for any other symbol gets INVALID_ARGUMENT, as the tests of that check).
TEST_SYMBOLS = ("AAPL", "AMZN", "GOOG", "MSFT", "A", "AB", "B", "CLA", "CLB", "CLC", "CLD",
                "CLE", "CLF", "CLS", "DUR", "HHHH", "KIL", "NEM", "OK", "ONE", "RJN", "SDU",
                "SES", "SGR", "SMD", "TSTA", "TSTB", "TSTC", "TSTD", "TSTE", "TSTR", "WTCH")


@pytest.fixture(scope="module")
def standalone():
    with LocalCluster(1, name="t-one", symbols=TEST_SYMBOLS) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def cluster3():
    with LocalCluster(3, name="t-three", symbols=TEST_SYMBOLS) as cluster:
        yield cluster


def new_client(cluster: LocalCluster, give_up_s: float = 15.0) -> TraderClient:
    connection = ClusterConnection(tuple(cluster.addresses.values()))
    return TraderClient(connection, next(_client_ids), give_up_s=give_up_s)
