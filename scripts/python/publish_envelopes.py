"""Google's Python Pub/Sub client against bqsync's public message contract.

    publish_envelopes.py --topic projects/P/topics/T --count N [--upserts M]
        Publishes N `atoms` inserts (event ids py-0 … py-N-1) and M `contacts_master` upserts over
        M/3 keys with versions 1..3, in the documented envelope (schemas/envelope.schema.json) with
        the documented attributes. Prints a JSON line: messages, seconds, cpu_seconds.
    publish_envelopes.py consume --subscription projects/P/subscriptions/S --count N [--streams K]
        Receives and acks N messages by streaming pull (the client's default scheduler). Prints the
        same JSON line. Used by the benchmark (benches/pubsub.rs) for the Python side.

Reads PUBSUB_EMULATOR_HOST like every Google client library.
"""

import argparse
import json
import resource
import threading
import time

from google.cloud import pubsub_v1


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def atom(i):
    event_id = f"py-{i}"
    payload = {
        "event_id": event_id,
        "entity_id": f"ent-{i % 1000:07d}",
        "kind": "click",
        "text": f"from python {i}",
        "score": 1.5,
        "tags": ["py"],
        "created_at": "2024-01-01T00:00:00Z",
    }
    body = {"event_id": event_id, "table": "atoms", "op": "insert", "payload": payload,
            "source": "python-client", "produced_at": "2024-01-01T00:00:00Z"}
    return body, {"bqsync_table": "atoms", "bqsync_event_id": event_id}


def contact(i):
    key, version = f"py-c-{i // 3}", i % 3 + 1
    event_id = f"py-contact-{key}-v{version}"
    payload = {"contact_id": key, "name": f"Py {key}", "email": f"{key}-v{version}@example.com",
               "version": version}
    body = {"event_id": event_id, "table": "contacts_master", "op": "upsert", "key": {"contact_id": key},
            "version": version, "payload": payload, "source": "python-client",
            "produced_at": "2024-01-01T00:00:00Z"}
    return body, {"bqsync_table": "contacts_master", "bqsync_event_id": event_id}


def publish(args):
    publisher = pubsub_v1.PublisherClient(
        batch_settings=pubsub_v1.types.BatchSettings(max_messages=1000, max_bytes=4 << 20, max_latency=0.01))
    started, cpu = time.monotonic(), cpu_seconds()
    futures = []
    messages = [atom(i) for i in range(args.count)] + [contact(i) for i in range(args.upserts)]
    for body, attributes in messages:
        data = json.dumps(body, separators=(",", ":")).encode()
        futures.append(publisher.publish(args.topic, data, **attributes))
    for future in futures:
        future.result(timeout=120)
    print(json.dumps({"messages": len(messages), "seconds": time.monotonic() - started,
                      "cpu_seconds": cpu_seconds() - cpu}))


def consume(args):
    subscriber = pubsub_v1.SubscriberClient()
    received = 0
    done = threading.Event()
    lock = threading.Lock()

    def callback(message):
        nonlocal received
        message.ack()
        with lock:
            received += 1
            if received >= args.count:
                done.set()

    started, cpu = time.monotonic(), cpu_seconds()
    flow = pubsub_v1.types.FlowControl(max_messages=args.max_outstanding)
    futures = [subscriber.subscribe(args.subscription, callback, flow_control=flow) for _ in range(args.streams)]
    done.wait(timeout=args.timeout)
    seconds = time.monotonic() - started
    for future in futures:
        future.cancel()
    print(json.dumps({"messages": received, "seconds": seconds, "cpu_seconds": cpu_seconds() - cpu}))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", nargs="?", default="publish", choices=["publish", "consume"])
    parser.add_argument("--topic")
    parser.add_argument("--subscription")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--upserts", type=int, default=0)
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--max-outstanding", type=int, default=10000)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    publish(args) if args.mode == "publish" else consume(args)


if __name__ == "__main__":
    main()
