"""WAV in, MP3 out: the conversion pipeline, with no HTTP in it."""
