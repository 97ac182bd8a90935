"""Raw AMQP ceilings on the same RabbitMQ: ``python -m peers.ceiling MODE --n N --queue Q``.

publish-aiopika  persistent publishes, up to ``--in-flight`` (256) confirms outstanding
publish-pika     persistent publishes, each waiting for its confirm (BlockingConnection)
consume-pika     consume N messages, acking each (``--ack-every 1``) or every K with multiple=True
The queue is durable; a publish run leaves its N messages for the consume run that follows.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

import aio_pika
import pika
from benchlib.pace import emit, timed

URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
BODY = b'{"id":"00000000-0000-0000-0000-000000000000","type":"bench.noop","params":{"i":0,"sent":0.0}}'


async def publish_aiopika(n: int, queue: str, in_flight: int, max_s: float) -> dict[str, float]:
    connection = await aio_pika.connect(URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(queue, durable=True)
        gate = asyncio.Semaphore(in_flight)

        async def one() -> None:
            try:
                await channel.default_exchange.publish(
                    aio_pika.Message(BODY, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=queue)
            finally:
                gate.release()

        start = time.perf_counter()
        pending = set()
        sent = 0
        while sent < n and time.perf_counter() - start < max_s:
            sent += 1
            await gate.acquire()
            task = asyncio.ensure_future(one())
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*list(pending))
        elapsed = time.perf_counter() - start
    return {"elapsed_s": elapsed, "n": sent, "rate": sent / elapsed, "capped": float(sent < n)}


def blocking_channel(queue: str) -> tuple[pika.BlockingConnection, Any]:
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    channel = connection.channel()
    channel.queue_declare(queue, durable=True)
    return connection, channel


def publish_pika(n: int, queue: str, max_s: float) -> dict[str, float]:
    connection, channel = blocking_channel(queue)
    channel.confirm_delivery()
    props = pika.BasicProperties(delivery_mode=2)

    def step(low: int) -> int:
        high = min(n, low + 100)
        for _ in range(low, high):
            channel.basic_publish("", queue, BODY, props)
        return high - low

    result = timed(step, n, max_s)
    connection.close()
    return result


def consume_pika(n: int, queue: str, ack_every: int, prefetch: int) -> dict[str, float]:
    connection, channel = blocking_channel(queue)
    channel.basic_qos(prefetch_count=prefetch)
    seen = 0
    first = last = 0.0
    for method, _props, _body in channel.consume(queue, inactivity_timeout=30):
        if method is None:
            break  # the queue ran dry early: report what came
        seen += 1
        last = time.perf_counter()
        if seen == 1:
            first = last
        if seen % ack_every == 0 or seen == n:
            channel.basic_ack(method.delivery_tag, multiple=ack_every > 1)
        if seen >= n:
            break
    channel.cancel()
    connection.close()
    elapsed = max(last - first, 1e-9)
    return {"elapsed_s": elapsed, "n": seen, "rate": (seen - 1) / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["publish-aiopika", "publish-pika", "consume-pika"])
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--in-flight", type=int, default=256)
    parser.add_argument("--ack-every", type=int, default=1)
    parser.add_argument("--prefetch", type=int, default=100)
    parser.add_argument("--max-s", type=float, default=30.0, help="stop publishing after this long")
    args = parser.parse_args()
    if args.mode == "publish-aiopika":
        emit(asyncio.run(publish_aiopika(args.n, args.queue, args.in_flight, args.max_s)))
    elif args.mode == "publish-pika":
        emit(publish_pika(args.n, args.queue, args.max_s))
    else:
        emit(consume_pika(args.n, args.queue, args.ack_every, args.prefetch))


if __name__ == "__main__":
    main()
