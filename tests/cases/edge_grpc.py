#!/usr/bin/env python3
"""grpcio peers (raw-bytes messages, no protoc) for strait edge-case reproductions.

  edge_grpc.py server PORT [--max-streams N]
      /edge.Edge/Ping        unary: b"pong"
      /edge.Edge/Quiet       server stream: b"first", then silence for int(req)
                             seconds (default 100), then b"second"
      /edge.Edge/Firehose    server stream: 64 KiB messages as fast as flow
                             control allows, until the client goes away
      /edge.Edge/Fail        unary: NOT_FOUND "no such widget" before any
                             message (grpcio sends it as a Trailers-Only response)
      /edge.Edge/BigTrailers unary: INVALID_ARGUMENT "see x-details-bin" with a
                             trailer x-details-bin of int(req) bytes (default 32768)
      /edge.Edge/Who         unary: the server's host name (its pod's name)
      Ping policy: grpcio's defaults (while the server sends nothing, a PING
      less than 5 min after the previous one is a strike; past 2 strikes, i.e.
      at the 4th such PING, GOAWAY ENHANCE_YOUR_CALM "too_many_pings").
  edge_grpc.py quiet TARGET SECONDS       one Quiet call; JSON with the messages,
                                          when they came, the final status
  edge_grpc.py hold TARGET N SECONDS      N Quiet(SECONDS) calls at once, each on its
                                          own channel and TCP connection; JSON with
                                          the seconds each took to its first message
  edge_grpc.py stall TARGET N SECONDS     N Firehose calls on their own connections;
                                          each reads one message, then stops reading
                                          for SECONDS, then cancels
  edge_grpc.py ping TARGET COUNT          COUNT Ping calls, 10 per second, 2 s deadline
  edge_grpc.py fail TARGET                one Fail call
  edge_grpc.py trailers TARGET BYTES      one BigTrailers call
  edge_grpc.py who TARGET COUNT           COUNT sequential Who calls on one channel;
                                          JSON {by_pod, errors}
"""
import json, socket, sys, threading, time
from concurrent import futures
import grpc

BIG_MD = [("grpc.max_metadata_size", 1 << 20), ("grpc.absolute_max_metadata_size", 1 << 20)]
MSG = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def ping(req, ctx):
    return b"pong"


def quiet(req, ctx):
    secs = int(req or b"100")
    yield b"first"
    end = time.time() + secs
    while time.time() < end:
        if not ctx.is_active():
            log("Quiet: client went away after", round(secs - (end - time.time()), 1), "s")
            return
        time.sleep(0.2)
    yield b"second"
    log("Quiet: completed after", secs, "s")


def firehose(req, ctx):
    blob = b"f" * 65536
    sent = 0
    try:
        while ctx.is_active():
            yield blob
            sent += 1
    finally:
        log("Firehose: ended after %d messages of 64 KiB" % sent)


def fail(req, ctx):
    ctx.abort(grpc.StatusCode.NOT_FOUND, "no such widget")


def big_trailers(req, ctx):
    n = int(req or b"32768")
    ctx.set_trailing_metadata((("x-details-bin", b"d" * n),))
    ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "see x-details-bin")


def who(req, ctx):
    return socket.gethostname().encode()


def serve(port, max_streams):
    opts = MSG + BIG_MD
    if max_streams:
        opts.append(("grpc.max_concurrent_streams", max_streams))
    h = grpc.method_handlers_generic_handler("edge.Edge", {
        "Ping": grpc.unary_unary_rpc_method_handler(ping),
        "Quiet": grpc.unary_stream_rpc_method_handler(quiet),
        "Firehose": grpc.unary_stream_rpc_method_handler(firehose),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "BigTrailers": grpc.unary_unary_rpc_method_handler(big_trailers),
        "Who": grpc.unary_unary_rpc_method_handler(who),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64), options=opts)
    server.add_generic_rpc_handlers((h,))
    server.add_insecure_port("0.0.0.0:%d" % port)
    server.start()
    log("edge_grpc server on", port, "max_concurrent_streams", max_streams or "default")
    server.wait_for_termination()


def channel(target, extra=()):
    # A channel of its own, on a TCP connection of its own.
    return grpc.insecure_channel(target, options=MSG + BIG_MD + [("grpc.use_local_subchannel_pool", 1)] + list(extra))


def status(e):
    return {"code": e.code().name, "details": e.details()}


def cmd_quiet(target, secs):
    t0 = time.time()
    out = {"messages": []}
    try:
        for m in channel(target).unary_stream("/edge.Edge/Quiet")(str(secs).encode(), timeout=secs + 60):
            out["messages"].append([m.decode(), round(time.time() - t0, 1)])
        out["status"] = "OK"
    except grpc.RpcError as e:
        out["status"] = status(e)
    out["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out))


def cmd_hold(target, n, secs):
    firsts, finals, lock = [], {}, threading.Lock()

    def one():
        t0 = time.time()
        try:
            it = channel(target).unary_stream("/edge.Edge/Quiet")(str(secs).encode(), timeout=secs + 15)
            next(it)
            with lock:
                firsts.append(round(time.time() - t0, 2))
            for _ in it:
                pass
            final = "OK"
        except grpc.RpcError as e:
            final = e.code().name
        with lock:
            finals[final] = finals.get(final, 0) + 1

    ts = [threading.Thread(target=one) for _ in range(n)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    print(json.dumps({"first_message_seconds": sorted(firsts), "final": finals}))


def cmd_stall(target, n, secs):
    calls, got_first = [], []

    def one(i):
        ch = channel(target, [("grpc.http2.bdp_probe", 0)])
        it = ch.unary_stream("/edge.Edge/Firehose")(b"", timeout=secs + 30)
        calls.append(it)
        try:
            next(it)  # one message, then stop reading
            got_first.append(i)
        except grpc.RpcError as e:
            log("stall: stream %d ended before its first message: %s" % (i, e.code().name))

    for i in range(n):
        threading.Thread(target=one, args=(i,), daemon=True).start()
    time.sleep(3)
    log("stall: %d streams open, %d got their first message, none read further" % (len(calls), len(got_first)))
    time.sleep(max(0, secs - 3))
    for it in calls:
        it.cancel()
    log("stall: cancelled all %d" % len(calls))


def cmd_ping(target, count):
    call = channel(target).unary_unary("/edge.Edge/Ping")
    ok, errors, lat = 0, {}, []
    for _ in range(count):
        t0 = time.time()
        try:
            call(b"", timeout=2)
            ok += 1
            lat.append((time.time() - t0) * 1000)
        except grpc.RpcError as e:
            errors[e.code().name] = errors.get(e.code().name, 0) + 1
        time.sleep(max(0, 0.1 - (time.time() - t0)))
    lat.sort()
    print(json.dumps({"ok": ok, "errors": errors, "p99_ms": round(lat[int(len(lat) * 0.99) - 1], 1) if lat else None}))


def cmd_who(target, count):
    call = channel(target).unary_unary("/edge.Edge/Who")
    by_pod, errors = {}, {}
    for _ in range(count):
        try:
            pod = call(b"", timeout=10).decode()
            by_pod[pod] = by_pod.get(pod, 0) + 1
        except grpc.RpcError as e:
            key = "%s: %s" % (e.code().name, e.details())
            errors[key] = errors.get(key, 0) + 1
    print(json.dumps({"by_pod": by_pod, "errors": errors}))


def cmd_unary(target, method, req):
    try:
        channel(target).unary_unary("/edge.Edge/" + method).with_call(req, timeout=10)
        out = {"status": "OK"}
    except grpc.RpcError as e:
        out = status(e)
        out["trailers"] = {k: len(v) for k, v in (e.trailing_metadata() or ())}
    print(json.dumps(out))


if __name__ == "__main__":
    a = sys.argv[1:]
    if a[0] == "server":
        serve(int(a[1]), int(a[3]) if len(a) > 3 and a[2] == "--max-streams" else 0)
    elif a[0] == "quiet":
        cmd_quiet(a[1], int(a[2]))
    elif a[0] == "hold":
        cmd_hold(a[1], int(a[2]), int(a[3]))
    elif a[0] == "stall":
        cmd_stall(a[1], int(a[2]), int(a[3]))
    elif a[0] == "ping":
        cmd_ping(a[1], int(a[2]))
    elif a[0] == "fail":
        cmd_unary(a[1], "Fail", b"")
    elif a[0] == "trailers":
        cmd_unary(a[1], "BigTrailers", a[2].encode())
    elif a[0] == "who":
        cmd_who(a[1], int(a[2]))
    else:
        sys.exit(__doc__)
