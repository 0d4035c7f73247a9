"""After the VAE decode: frame interpolation, between the engine and the MP4 encoder."""
