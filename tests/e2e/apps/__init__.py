"""Task modules the end-to-end tests run in real worker processes."""
