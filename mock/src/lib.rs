//! An LLM-like streaming upstream (to be written).
