"""Local paths and URLs alike; files written atomically."""

import os

import pytest

from input_pipeline import files


@pytest.mark.parametrize(
    'path', ['a/1.jpg', 'a/../b.jpg', './a/1.jpg', 'a..b/1.jpg', '..a.jpg']
)
def test_paths_that_stay_inside_the_root(path):
  assert files.stays_inside_root(path)


class TestWriteAtomically:

  def test_the_file_appears_only_once_written(self, tmp_path):
    path = tmp_path / 'new' / 'cache.json'
    with files.write_atomically(str(path)) as f:
      f.write('{}')
      assert not path.exists()
    assert path.read_text() == '{}'
    assert os.listdir(path.parent) == ['cache.json']

  def test_a_failed_write_leaves_the_old_file_and_nothing_else(self, tmp_path):
    path = tmp_path / 'cache.json'
    path.write_text('old')
    with pytest.raises(KeyboardInterrupt):
      with files.write_atomically(str(path)) as f:
        f.write('half')
        raise KeyboardInterrupt
    assert path.read_text() == 'old'
    assert os.listdir(tmp_path) == ['cache.json']

  def test_writers_of_one_path_at_once_each_finish(self, tmp_path):
    path = str(tmp_path / 'cache.json')
    with files.write_atomically(path) as first:
      with files.write_atomically(path) as second:  # another host
        second.write('second')
      first.write('first')
    assert open(path).read() == 'first'
    assert os.listdir(tmp_path) == ['cache.json']


class TestUrlErrors:
  """TensorFlow's file-system errors on a URL, as this package's."""

  UNREACHABLE = (
      "Error executing an HTTP request: libcurl code 6 meaning 'Could not "
      "resolve hostname', error details: Could not resolve host: "
      'www.googleapis.com\n\t when reading metadata of gs://b/list.txt'
  )

  def test_an_unreachable_store_is_one_line_naming_the_url_and_cause(self):
    import tensorflow as tf

    with pytest.raises(files.DataError) as error:
      with files.url_errors('gs://b/list.txt'):
        raise tf.errors.FailedPreconditionError(None, None, self.UNREACHABLE)
    assert str(error.value) == (
        'gs://b/list.txt cannot be read (Could not resolve host: '
        'www.googleapis.com); check the path, the network and the credentials'
        ' (gcloud auth application-default login).'
    )

  def test_a_missing_object_is_file_not_found(self):
    import tensorflow as tf

    with pytest.raises(FileNotFoundError) as error:
      with files.url_errors('gs://b/a.jpg'):
        raise tf.errors.NotFoundError(None, None, 'No such object: b/a.jpg')
    assert error.value.filename == 'gs://b/a.jpg'

  def test_other_errors_pass_as_they_are(self):
    with pytest.raises(KeyError):
      with files.url_errors('gs://b/a.jpg'):
        raise KeyError('x')
