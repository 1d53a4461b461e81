//! policy + observed host facts -> map plan. Pure: no I/O, no clock, no aya.
