//! A fake Discord gateway for tests.
