//! Per-line accounting, free of Python: the tracer feeds it samples, `cargo test` checks it.
//!
//! A *sample* is the RSS now plus the highest RSS since the previous sample (`high >= rss`;
//! with no exact peak available the caller passes `high == rss`). A line is *open* from the
//! sample taken when it starts until the sample taken when the next line of the same function
//! starts (or the function returns). For every occurrence of a line:
//! - increment += rss at close - rss at open (negative when memory was released),
//! - peak = max(peak, highest rss while open - rss at open),
//! - mem_usage = rss at close (the last occurrence wins), occurrences += 1.
//!
//! Several functions can have a line open at once (the test's line that calls an included
//! function stays open while the callee's lines open and close): every sample raises the
//! highest-seen value of every open line, so the caller's line sees the callee's peaks too.
//! Nothing here allocates on the per-sample path except when a line number beyond the
//! pre-sized range first appears.

/// The numbers of one source line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LineStat {
    pub occurrences: u64,
    pub increment: i64,
    pub peak: i64,
    pub mem_usage: u64,
}

#[derive(Clone, Copy, Debug)]
struct OpenLine {
    line: u32,
    start_rss: u64,
    high: u64,
}

/// The lines of one function (one code object).
#[derive(Debug)]
pub struct FunctionRecord {
    pub first_line: u32,
    stats: Vec<LineStat>,
    open: Option<OpenLine>,
}

impl FunctionRecord {
    pub fn new(first_line: u32, n_lines_hint: usize) -> Self {
        FunctionRecord {
            first_line,
            stats: vec![LineStat::default(); n_lines_hint],
            open: None,
        }
    }

    /// `(line number, stats)` for every line that ran, in line order.
    pub fn lines(&self) -> impl Iterator<Item = (u32, LineStat)> + '_ {
        self.stats
            .iter()
            .enumerate()
            .filter(|(_, s)| s.occurrences > 0)
            .map(|(i, s)| (self.first_line + i as u32, *s))
    }

    #[inline]
    fn close(&mut self, rss: u64) {
        if let Some(open) = self.open.take() {
            // Lines above the first line (a decorator, say) are charged to the first line.
            let idx = open.line.saturating_sub(self.first_line) as usize;
            if idx >= self.stats.len() {
                self.stats.resize(idx + 1, LineStat::default());
            }
            let s = &mut self.stats[idx];
            s.occurrences += 1;
            s.increment += rss as i64 - open.start_rss as i64;
            s.peak = s
                .peak
                .max(open.high.max(rss) as i64 - open.start_rss as i64);
            s.mem_usage = rss;
        }
    }
}

/// All functions of one trace, and the totals of the trace.
#[derive(Debug)]
pub struct Recorder {
    pub functions: Vec<FunctionRecord>,
    /// Indices of the functions with an open line (small: the traced call stack).
    open_functions: Vec<usize>,
    pub start_rss: u64,
    pub last_rss: u64,
    pub high_rss: u64,
    pub samples: u64,
}

impl Recorder {
    /// `start_rss`: the reading when the trace starts, used until the first line rebases it.
    pub fn new(start_rss: u64) -> Self {
        Recorder {
            functions: Vec::new(),
            open_functions: Vec::with_capacity(8),
            start_rss,
            last_rss: start_rss,
            high_rss: start_rss,
            samples: 0,
        }
    }

    /// The line of function `func` that is running (opened, not yet closed), if any.
    pub fn open_line(&self, func: usize) -> Option<u32> {
        self.functions.get(func)?.open.as_ref().map(|o| o.line)
    }

    pub fn add_function(&mut self, first_line: u32, n_lines_hint: usize) -> usize {
        self.functions
            .push(FunctionRecord::new(first_line, n_lines_hint));
        self.functions.len() - 1
    }

    #[inline]
    fn observe(&mut self, rss: u64, high: u64) {
        let high = high.max(rss);
        self.samples += 1;
        self.last_rss = rss;
        if high > self.high_rss {
            self.high_rss = high;
        }
        for &f in &self.open_functions {
            if let Some(open) = &mut self.functions[f].open {
                if high > open.high {
                    open.high = high;
                }
            }
        }
    }

    /// Line `line` of function `func` starts: closes the function's previous line, opens this one.
    /// The first line of the trace rebases it: the totals count from the start of the traced
    /// body, not from the caller's set-up before it (which varies from run to run).
    #[inline]
    pub fn line(&mut self, func: usize, line: u32, rss: u64, high: u64) {
        if self.samples == 0 {
            self.start_rss = rss;
            self.high_rss = rss;
            self.samples = 1;
            self.last_rss = rss;
        } else {
            self.observe(rss, high);
        }
        let record = &mut self.functions[func];
        let was_open = record.open.is_some();
        record.close(rss);
        record.open = Some(OpenLine {
            line,
            start_rss: rss,
            high: rss,
        });
        if !was_open {
            self.open_functions.push(func);
        }
    }

    /// Function `func` returned: closes its open line.
    #[inline]
    pub fn close(&mut self, func: usize, rss: u64, high: u64) {
        self.observe(rss, high);
        let record = &mut self.functions[func];
        if record.open.is_some() {
            record.close(rss);
            if let Some(pos) = self.open_functions.iter().rposition(|&f| f == func) {
                self.open_functions.swap_remove(pos);
            }
        }
    }

    /// The trace ends: closes every open line.
    pub fn finish(&mut self, rss: u64, high: u64) {
        self.observe(rss, high);
        for f in std::mem::take(&mut self.open_functions) {
            self.functions[f].close(rss);
        }
    }

    /// Highest RSS during the trace minus RSS at its start.
    pub fn peak_growth(&self) -> i64 {
        self.high_rss as i64 - self.start_rss as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn stat(r: &Recorder, f: usize, line: u32) -> LineStat {
        r.functions[f]
            .lines()
            .find(|(l, _)| *l == line)
            .map(|(_, s)| s)
            .unwrap_or_default()
    }

    #[test]
    fn seed_example() {
        // a = [1] * 10**6 ; b = [2] * (2 * 10**7) ; del b ; return a
        let base = 50 * MIB;
        let mut r = Recorder::new(base);
        let f = r.add_function(1, 5);
        r.line(f, 2, base, base);
        r.line(f, 3, base + 8 * MIB, base + 8 * MIB);
        r.line(f, 4, base + 160 * MIB, base + 160 * MIB);
        r.line(f, 5, base + 8 * MIB, base + 160 * MIB);
        r.close(f, base + 8 * MIB, base + 8 * MIB);
        assert_eq!(stat(&r, f, 2).increment, 8 * MIB as i64);
        assert_eq!(stat(&r, f, 3).increment, 152 * MIB as i64);
        assert_eq!(stat(&r, f, 4).increment, -(152 * MIB as i64));
        assert_eq!(stat(&r, f, 4).peak, 0);
        assert_eq!(stat(&r, f, 5).increment, 0);
        assert_eq!(stat(&r, f, 4).mem_usage, base + 8 * MIB);
        assert_eq!(r.peak_growth(), 160 * MIB as i64);
    }

    #[test]
    fn loops_sum_their_increments() {
        // for i in range(1000): keep.append(bytearray(100 KiB))
        let mut r = Recorder::new(0);
        let f = r.add_function(10, 4);
        let mut rss = 10 * MIB;
        for _ in 0..1000 {
            r.line(f, 11, rss, rss); // the `for` line
            r.line(f, 12, rss, rss);
            rss += 100 * 1024;
        }
        r.line(f, 11, rss, rss);
        r.finish(rss, rss);
        let body = stat(&r, f, 12);
        assert_eq!(body.occurrences, 1000);
        assert_eq!(body.increment, 1000 * 100 * 1024);
        assert_eq!(body.peak, 100 * 1024);
        assert_eq!(stat(&r, f, 11).occurrences, 1001);
        assert_eq!(stat(&r, f, 11).increment, 0);
    }

    #[test]
    fn a_transient_peak_shows_in_peak_not_increment() {
        let mut r = Recorder::new(100);
        let f = r.add_function(1, 3);
        r.line(f, 2, 100, 100);
        // the callee allocated and freed 200 MiB: rss back to ~100, high seen 100 + 200 MiB
        r.line(f, 3, 101, 100 + 200 * MIB);
        r.finish(101, 101);
        let s = stat(&r, f, 2);
        assert_eq!(s.increment, 1);
        assert_eq!(s.peak, 200 * MIB as i64);
        assert_eq!(r.peak_growth(), 200 * MIB as i64);
    }

    #[test]
    fn a_callers_open_line_sees_the_callees_peak() {
        let mut r = Recorder::new(0);
        let test = r.add_function(1, 4);
        let lib = r.add_function(100, 4);
        r.line(test, 2, 0, 0);
        r.line(lib, 101, 10, 10);
        r.line(lib, 102, 50, 80);
        r.close(lib, 20, 20);
        r.line(test, 3, 20, 20);
        r.finish(20, 20);
        assert_eq!(stat(&r, lib, 101).peak, 80 - 10);
        assert_eq!(stat(&r, lib, 101).increment, 40);
        assert_eq!(stat(&r, lib, 102).increment, -30);
        assert_eq!(stat(&r, test, 2).peak, 80);
        assert_eq!(stat(&r, test, 2).increment, 20);
    }

    #[test]
    fn lines_beyond_the_hint_and_before_the_first_line() {
        let mut r = Recorder::new(0);
        let f = r.add_function(10, 1);
        r.line(f, 500, 0, 0);
        r.line(f, 3, 5, 5);
        r.finish(7, 7);
        assert_eq!(stat(&r, f, 500).increment, 5);
        assert_eq!(
            stat(&r, f, 10).increment,
            2,
            "line 3 is charged to the first line"
        );
    }

    #[test]
    fn the_first_line_rebases_the_totals() {
        let mut r = Recorder::new(100);
        let f = r.add_function(1, 2);
        // set-up before the body peaked at 500 and left 120 behind: not the test's
        r.line(f, 2, 120, 500);
        r.line(f, 3, 150, 160);
        r.finish(150, 150);
        assert_eq!(r.start_rss, 120);
        assert_eq!(r.peak_growth(), 40);
    }

    #[test]
    fn close_without_open_line_is_harmless() {
        let mut r = Recorder::new(0);
        let f = r.add_function(1, 1);
        r.close(f, 5, 5);
        r.finish(5, 5);
        assert_eq!(r.functions[f].lines().count(), 0);
        assert_eq!(r.samples, 2);
    }
}
