"""Methods built on unidet2, one self-contained folder each."""
