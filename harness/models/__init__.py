"""Model code and model sources: the built-in GPT, trained references, Hugging Face folders, data, precision and
byte accounting."""
