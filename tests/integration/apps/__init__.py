"""Task modules the integration tests run in real worker processes."""
