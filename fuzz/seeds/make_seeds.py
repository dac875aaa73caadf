#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (fuzz/seeds/TARGET/seed-*), from the bad inputs the tests
feed: tests/embedded_pipeline.rs (BOM, CRLF, blank lines, not UTF-8, invalid JSON, not an object,
oversize, schema violations), tests/admin.rs, tests/transforms.rs, tests/first_hour.rs (UTF-16),
src/envelope.rs (a number beyond f64), tests/dlq_replay.rs (replay edits). Run it again after
adding a case; the files are checked in."""
import json, os

here = os.path.dirname(os.path.abspath(__file__))

def envelope(payload, table="atoms", op="insert", key=None, version=None, event_id="e-1",
             produced_at="2024-01-01T00:00:00Z"):
    out = '{"event_id":%s,"table":%s,"op":"%s"' % (json.dumps(event_id), json.dumps(table), op)
    if key is not None:
        out += ',"key":' + json.dumps(key)
    if version is not None:
        out += ',"version":%d' % version
    out += ',"payload":' + payload + ',"source":"seed","produced_at":' + json.dumps(produced_at) + "}"
    return out.encode()

good_atom = '{"event_id":"a-1","text":"hello","score":1.5,"created_at":"2024-01-01T00:00:00Z"}'
bad_lines = [
    b"\xef\xbb\xbf" + good_atom.encode() + b"\n",
    good_atom.encode() + b"\r\n",
    b"\n   \n",
    b'{"event_id":"bad-utf8","text":"\xff\xfe"}\n',
    b'{"event_id": oops}\n',
    b"[1,2,3]\n",
    b'{"event_id":"long","text":"' + b"x" * 300 + b'"}\n',
    b'{"event_id":"bad-score","score":"abc","created_at":"2024-01-01T00:00:00Z"}\n',
    b'{"event_id":"no-time"}\n',
    b'{"event_id":"extra","created_at":"2024-01-01T00:00:00Z","colour":"red"}\n',
    b'{"text":"no id","created_at":"2024-01-01T00:00:00Z"}\n',
    b'{not json\n{"event_id":"x","score":"high","created_at":"2024-01-01T00:00:00Z"}\n',
    b"{oops secret not json\n",
    '{"event_id":"u16"}\n'.encode("utf-16-le"),
    b'{"name":"no key","version":1}\n',
    b'{"half":',
]

payloads = [
    good_atom,
    '{"n":1e400,"s":"x"}',
    '{"event_id":"big","score":123456789012345678901234567890,"created_at":"2024-01-01T00:00:00Z"}',
    '{"event_id":"t","created_at":"9999-12-31T23:59:59.999999Z"}',
    '{"event_id":"t","created_at":"0001-01-01T00:00:00Z"}',
    '{"event_id":"t","created_at":1700000000}',
    '{"event_id":"t","created_at":"2024-02-30T00:00:00+25:00"}',
    '{"contact_id":"c-1","email":"a@b.c","version":3,"tags":["x","y"]}',
    '{"contact_id":null,"version":"7"}',
    '{"event_id":"\\u0000","text":"\\ud800"}',
]

seeds = {"envelope": [], "jsonl_framing": [], "coercion": [], "http_response": [], "replay_edits": []}
for p in payloads:
    seeds["envelope"].append(envelope(p))
    seeds["coercion"].append(p.encode())
seeds["envelope"] += [
    envelope('{"contact_id":"c-1","version":2}', "contacts_master", "upsert", {"contact_id": "c-1"}, 2),
    envelope('{"contact_id":"c-1"}', "contacts_master", "delete", {"contact_id": "c-1"}, 3),
    envelope("{}", "nosuchtable"),
    envelope("{}", "atoms", "upsert"),
    envelope(good_atom, produced_at="yesterday"),
    b'{"event_id":"e","table":"t","op":"insert","payload":{"a":1},"extra":1}',
]
# b"-9223372036854775808": fuzz finding (fixed), epoch seconds saturating to i64::MIN µs.
seeds["coercion"] += [b'"2024-01-01T00:00:00Z"', b"-9223372036854775808", b"18446744073709551616",
                      b"1.7976931348623157e308", b'"AAEC"', b"[1,[2]]", b'{"a":{"b":null}}', b"true"]
for i, line in enumerate(bad_lines):
    # limit byte, pieces byte (how many piece sizes follow), piece sizes, then the stream.
    seeds["jsonl_framing"].append(bytes([i * 7 % 64, 3, 1, 5, 2]) + line)
seeds["jsonl_framing"].append(bytes([63, 0]) + b"".join(bad_lines))
# Fuzz finding (fixed): a BOM-prefixed first line within the limit, read in pieces, was oversize.
seeds["jsonl_framing"].append(bytes([3, 2, 0, 0]) + b"\xef\xbb\xbfabc\r\n")
for choice, body in [(0, b'[{"id":1,"updated":"2024-01-01T00:00:00Z"}]'),
                     (21, b'{"data":[{"id":1}],"next":"p2"}'),
                     (7, b'{"data":{"items":[{"id":"x"}]},"next":""}'),
                     (1, b'{"data":{"not":"an array"}}'),
                     (3, b'<html>502 Bad Gateway</html>'),
                     (2, b'{"data":{"items":null}}'),
                     (0, b"7\xffWed, 21 Oct 2015 07:28:00 GMT"),
                     (0, b"2024-01-01T00:00:00Z\xff2024-01-01T00:00:00+01:00"),
                     (0, b"10\xff9.5"), (0, b"NaN\xff1"), (0, b"abc\xff1e999")]:
    seeds["http_response"].append(bytes([choice]) + body)
replays = [
    (b"score=2\ntext=score", envelope('{"event_id":"bad-score","score":"abc","created_at":"2024-01-01T00:00:00Z"}')),
    (b"n=1\n\nn", envelope('{"n":1e400,"s":"x"}')),
    (b"created_at=\"2024-01-01T00:00:00Z\"\ncolour=text\ncolour", b'{"event_id":"extra","colour":"red"}'),
    (b"event_id=\"fixed\"", b'{"text":"no id","created_at":"2024-01-01T00:00:00Z"}'),
    (b"=x\nbad\n", envelope(good_atom)),
    (b"score=1e999", envelope(good_atom)),
    (b"score=99999999999999999999", envelope(good_atom)),
    # Fuzz finding (fixed): a float set by replay read back one ulp off.
    (b"score=99990000001279143091", envelope(good_atom)),
    (b"!score=2", b'{"event_id":"bad-score","score":"abc","created_at":"2024-01-01T00:00:00Z"}'),
    (b"!text=1\n\ntext", b"{not json"),
]
for flags, message in replays:
    seeds["replay_edits"].append(flags + b"\xff" + message)

for target, items in seeds.items():
    folder = os.path.join(here, target)
    os.makedirs(folder, exist_ok=True)
    # seed-NN are written here; seed-regression-* are findings' inputs kept as they were found.
    for name in os.listdir(folder):
        if name.startswith("seed-") and not name.startswith("seed-regression-"):
            os.remove(os.path.join(folder, name))
    for i, data in enumerate(items):
        with open(os.path.join(folder, "seed-%02d" % i), "wb") as f:
            f.write(data)
    print(target, len(items))
