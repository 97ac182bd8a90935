"""The peers' side of the benchmark (Celery, Dramatiq, Huey, raw AMQP); runs in bench/.peers/venv."""
