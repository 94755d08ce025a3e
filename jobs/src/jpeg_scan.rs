//! Reading the entropy-coded data of a baseline JPEG ourselves (sequential, Huffman, 8-bit, one
//! scan, no restart intervals): every block's quantised coefficients, decoded exactly as libjpeg
//! decodes them (a test compares the two), and where each MCU row starts in the bitstream with
//! the DC predictors at that point.
//!
//! [`Scan::splice`] builds on it to change a band of MCU rows without re-encoding the rest: the
//! rows above the band are copied bit for bit, the band is decoded, changed and encoded again
//! with the image's own Huffman tables, and the rows below are copied too, shifted to the bit
//! where the band now ends. Only the first MCU below the band is encoded again, since its DC
//! values are coded as differences from the band's last ones. The rows below are still read
//! (not encoded): where their data ends, before the padding of the last byte, is only known that
//! way. Everything is done on the data
//! with its byte stuffing removed, which is put back at the end.

use crate::dct::ZIGZAG;

/// A Huffman table, with a 9-bit lookup for the common short codes.
#[derive(Clone)]
struct Huffman {
    /// `(length << 8) | symbol` for codes of up to [`FAST_BITS`] bits, indexed by the next
    /// [`FAST_BITS`] bits; 0 for longer codes.
    fast: Vec<u16>,
    /// Per code length, the largest code of that length (-1 for none).
    maxcode: [i32; 17],
    /// Per code length, `index of its first symbol - its first code`.
    offset: [i32; 17],
    symbols: Vec<u8>,
    /// Per symbol, `(code, length)` for encoding; length 0 when the table has no code for it.
    codes: Vec<(u16, u8)>,
    /// For AC tables: per [`FAST_BITS`] bits, when they hold a whole code and the value bits
    /// after it, `value << 16 | run << 8 | bits used`; else 0.
    fast_ac: Vec<i32>,
}

const FAST_BITS: u32 = 9;

impl Huffman {
    /// From a DHT table: the number of codes of each length 1–16, then the symbols.
    fn new(counts: &[u8; 16], symbols: &[u8]) -> Option<Self> {
        let mut fast = vec![0u16; 1 << FAST_BITS];
        let mut maxcode = [-1i32; 17];
        let mut offset = [0i32; 17];
        let mut codes = vec![(0u16, 0u8); 256];
        let mut code: i32 = 0;
        let mut index: i32 = 0;
        for len in 1..=16u32 {
            let n = counts[len as usize - 1] as i32;
            offset[len as usize] = index - code;
            for _ in 0..n {
                let symbol = *symbols.get(index as usize)?;
                codes[symbol as usize] = (code as u16, len as u8);
                if len <= FAST_BITS {
                    let shift = FAST_BITS - len;
                    let first = (code as usize) << shift;
                    for slot in &mut fast[first..first + (1 << shift)] {
                        *slot = ((len as u16) << 8) | symbol as u16;
                    }
                }
                code += 1;
                index += 1;
            }
            if n > 0 {
                maxcode[len as usize] = code - 1;
            }
            if code > (1 << len) {
                return None; // more codes than the length allows
            }
            code <<= 1;
        }
        let fast_ac = (0..1usize << FAST_BITS)
            .map(|bits| {
                let entry = fast[bits];
                let (len, rs) = ((entry >> 8) as u32, entry as u8);
                let (run, size) = ((rs >> 4) as i32, (rs & 15) as u32);
                if entry == 0 || size == 0 || len + size > FAST_BITS {
                    return 0;
                }
                let value = (bits as u32 >> (FAST_BITS - len - size)) & ((1 << size) - 1);
                (extend(value, size) << 16) | (run << 8) | (len + size) as i32
            })
            .collect();
        Some(Self {
            fast,
            maxcode,
            offset,
            symbols: symbols.get(..index as usize)?.to_vec(),
            codes,
            fast_ac,
        })
    }
}

/// One component of the frame, with the tables its scan uses.
#[derive(Clone)]
pub(crate) struct ScanComponent {
    /// Blocks per MCU, across and down (1 × 1 in a scan of one component).
    pub h: u32,
    pub v: u32,
    /// The component's own blocks, across and down; the MCUs at the right and bottom edges may
    /// hold dummy blocks beyond them, which decoders discard.
    pub blocks: (u32, u32),
    dc: Huffman,
    ac: Huffman,
}

/// A frame header: width, height, and per component its id and sampling factors.
type Frame = (u32, u32, Vec<(u8, u32, u32)>);

/// A baseline JPEG's single scan, ready to decode.
pub(crate) struct Scan {
    /// The components in frame order (the order libjpeg numbers them).
    pub components: Vec<ScanComponent>,
    /// The frame indexes of the scan's components, in scan order.
    order: Vec<usize>,
    pub mcus_x: u32,
    pub mcus_y: u32,
    /// Offset of the first byte of entropy-coded data.
    pub data_start: usize,
    /// The entropy-coded data with its stuffing removed (`FF 00` → `FF`).
    pub data: Vec<u8>,
    /// Offset of the marker that ends the entropy-coded data.
    pub data_end: usize,
}

/// Where one MCU row begins: its first bit in [`Scan::data`] and, per component in frame
/// order, the DC value its first block is predicted from.
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RowStart {
    pub bit: u64,
    pub dc: Vec<i32>,
}

impl Scan {
    /// `None` for anything but a baseline or extended sequential Huffman JPEG of 8 bits with
    /// one scan of every component and no restart intervals.
    pub fn parse(input: &[u8]) -> Option<Self> {
        let mut dc_tables: [Option<Huffman>; 4] = Default::default();
        let mut ac_tables: [Option<Huffman>; 4] = Default::default();
        let mut frame: Option<Frame> = None;
        if input.get(..2)? != [0xff, 0xd8] {
            return None;
        }
        let mut at = 2;
        loop {
            if *input.get(at)? != 0xff {
                return None;
            }
            while *input.get(at)? == 0xff {
                at += 1;
            }
            let marker = *input.get(at)?;
            at += 1;
            let len = u16::from_be_bytes([*input.get(at)?, *input.get(at + 1)?]) as usize;
            let segment = input.get(at + 2..at + len)?;
            match marker {
                0xc4 => {
                    let mut s = segment;
                    while !s.is_empty() {
                        let (class, id) = (s[0] >> 4, (s[0] & 15) as usize);
                        let counts: [u8; 16] = s.get(1..17)?.try_into().ok()?;
                        let n: usize = counts.iter().map(|&c| c as usize).sum();
                        let table = Huffman::new(&counts, s.get(17..17 + n)?)?;
                        match class {
                            0 => *dc_tables.get_mut(id)? = Some(table),
                            1 => *ac_tables.get_mut(id)? = Some(table),
                            _ => return None,
                        }
                        s = &s[17 + n..];
                    }
                }
                0xc0 | 0xc1 => {
                    if *segment.first()? != 8 {
                        return None;
                    }
                    let height = u16::from_be_bytes([*segment.get(1)?, *segment.get(2)?]) as u32;
                    let width = u16::from_be_bytes([*segment.get(3)?, *segment.get(4)?]) as u32;
                    let count = *segment.get(5)? as usize;
                    let mut comps = Vec::with_capacity(count);
                    for c in 0..count {
                        let spec = segment.get(6 + 3 * c..9 + 3 * c)?;
                        let (h, v) = ((spec[1] >> 4) as u32, (spec[1] & 15) as u32);
                        if !(1..=4).contains(&h) || !(1..=4).contains(&v) {
                            return None;
                        }
                        comps.push((spec[0], h, v));
                    }
                    if width == 0 || height == 0 || comps.is_empty() {
                        return None;
                    }
                    frame = Some((width, height, comps));
                }
                // Progressive, lossless, hierarchical or arithmetic frames.
                0xc2 | 0xc3 | 0xc5..=0xc7 | 0xc9..=0xcb | 0xcd..=0xcf => return None,
                // Restart intervals: a splice could copy whole intervals, but not yet.
                0xdd if u16::from_be_bytes([*segment.first()?, *segment.get(1)?]) != 0 => {
                    return None
                }
                0xda => {
                    let (width, height, comps) = frame?;
                    let count = *segment.first()? as usize;
                    if count != comps.len() {
                        return None; // one scan per component (or several scans): not here
                    }
                    let mut order = Vec::with_capacity(count);
                    let mut tables = vec![(0usize, 0usize); comps.len()];
                    for c in 0..count {
                        let spec = segment.get(1 + 2 * c..3 + 2 * c)?;
                        let index = comps.iter().position(|(id, _, _)| *id == spec[0])?;
                        order.push(index);
                        tables[index] = ((spec[1] >> 4) as usize, (spec[1] & 15) as usize);
                    }
                    let tail = segment.get(1 + 2 * count..4 + 2 * count)?;
                    if tail != [0, 63, 0] {
                        return None;
                    }
                    let hmax = comps.iter().map(|c| c.1).max()?;
                    let vmax = comps.iter().map(|c| c.2).max()?;
                    let components = comps
                        .iter()
                        .zip(&tables)
                        .map(|(&(_, h, v), &(dc, ac))| {
                            Some(ScanComponent {
                                h: if count == 1 { 1 } else { h },
                                v: if count == 1 { 1 } else { v },
                                blocks: (
                                    (width * h).div_ceil(hmax).div_ceil(8),
                                    (height * v).div_ceil(vmax).div_ceil(8),
                                ),
                                dc: dc_tables.get(dc)?.clone()?,
                                ac: ac_tables.get(ac)?.clone()?,
                            })
                        })
                        .collect::<Option<Vec<_>>>()?;
                    let (mcus_x, mcus_y) = if count == 1 {
                        // One component: its blocks, in raster order, one per MCU.
                        let (h, v) = (comps[0].1, comps[0].2);
                        (
                            (width * h).div_ceil(hmax).div_ceil(8),
                            (height * v).div_ceil(vmax).div_ceil(8),
                        )
                    } else {
                        (width.div_ceil(8 * hmax), height.div_ceil(8 * vmax))
                    };
                    let data_start = at + len;
                    let (data, data_end) = unstuff(input.get(data_start..)?);
                    return Some(Self {
                        components,
                        order,
                        mcus_x,
                        mcus_y,
                        data_start,
                        data,
                        data_end: data_start + data_end,
                    });
                }
                0xd9 => return None,
                _ => {}
            }
            at += len;
        }
    }

    /// `input` (whose scan this is) with MCU rows `first..end` changed by `filter`, which is
    /// called for every row of blocks of each component in that band, with the row's index in
    /// the component (blocks in natural order, as many as the component has across: the same
    /// rows libjpeg's coefficient filter sees). The other rows keep their entropy-coded data as
    /// it is. `None` when the data is corrupt or a changed block needs a code the image's
    /// Huffman tables do not have (optimised tables hold only the codes the image used): the
    /// caller takes another path.
    pub fn splice(
        &self,
        input: &[u8],
        first: u32,
        end: u32,
        mut filter: impl FnMut(&mut [i16], usize, u32),
    ) -> Option<Vec<u8>> {
        let end = end.min(self.mcus_y);
        if first >= end {
            return None;
        }
        let mut bits = Bits::new(&self.data);
        let mut dc = vec![0i32; self.components.len()];
        // The rows above the band: only where they end, and the DC values there.
        self.skip(&mut bits, &mut dc, first * self.mcus_x)?;
        let (band_start, band_dc) = (bits.pos(), dc.clone());
        // The band, into rows of blocks per component.
        let rows = end - first;
        let mut band: Vec<Vec<i16>> = self
            .components
            .iter()
            .map(|c| vec![0i16; (rows * c.v * self.mcus_x * c.h * 64) as usize])
            .collect();
        let mut block = [0i16; 64];
        for (ci, at) in self.band_blocks(rows) {
            let c = &self.components[ci];
            block.fill(0);
            bits.block(&c.dc, &c.ac, &mut dc[ci], &mut block)?;
            band[ci][at..at + 64].copy_from_slice(&block);
        }
        // The first MCU below the band, whose DC differences will change.
        let mut next: Vec<[i16; 64]> = Vec::new();
        if end < self.mcus_y {
            for &ci in &self.order {
                let c = &self.components[ci];
                for _ in 0..c.h * c.v {
                    block.fill(0);
                    bits.block(&c.dc, &c.ac, &mut dc[ci], &mut block)?;
                    next.push(block);
                }
            }
        }
        // The rest is copied, but where its data ends (before the padding of its last byte)
        // is only known by reading it.
        let rest = bits.pos();
        let decoded = (first + rows) * self.mcus_x + (end < self.mcus_y) as u32;
        self.skip(&mut bits, &mut dc, self.mcus_x * self.mcus_y - decoded)?;
        let data_end = bits.pos();
        if data_end > self.data.len() as u64 * 8 {
            return None;
        }
        for (ci, c) in self.components.iter().enumerate() {
            let width = (self.mcus_x * c.h) as usize * 64;
            let across = (c.blocks.0 as usize * 64).min(width);
            for k in 0..(rows * c.v) as usize {
                filter(
                    &mut band[ci][k * width..k * width + across],
                    ci,
                    first * c.v + k as u32,
                );
            }
        }
        // Out: the rows above as they were, the band, the first MCU below, the rest as it was.
        let mut out = BitWriter::with_capacity(self.data.len() + 4096);
        out.copy(&self.data, 0, band_start);
        let mut dc = band_dc;
        for (ci, at) in self.band_blocks(rows) {
            let c = &self.components[ci];
            let block: &[i16; 64] = band[ci][at..at + 64].try_into().ok()?;
            out.block(block, &mut dc[ci], &c.dc, &c.ac)?;
        }
        let mut blocks = next.iter();
        if end < self.mcus_y {
            for &ci in &self.order {
                let c = &self.components[ci];
                for _ in 0..c.h * c.v {
                    out.block(blocks.next()?, &mut dc[ci], &c.dc, &c.ac)?;
                }
            }
        }
        out.copy(&self.data, rest, data_end);
        let data = out.finish();
        // Put the stuffing back: a zero after every FF.
        let mut bytes = headers(input.get(..self.data_start)?)?;
        bytes.reserve(data.len() + data.len() / 128 + 16);
        let mut at = 0;
        while let Some(ff) = data[at..].iter().position(|&b| b == 0xff) {
            bytes.extend_from_slice(&data[at..at + ff + 1]);
            bytes.push(0);
            at += ff + 1;
        }
        bytes.extend_from_slice(&data[at..]);
        bytes.extend_from_slice(input.get(self.data_end..)?);
        Some(bytes)
    }

    /// Reads `count` MCUs, keeping only the DC values they leave.
    fn skip(&self, bits: &mut Bits, dc: &mut [i32], count: u32) -> Option<()> {
        let mut coeffs = [0i16; 64];
        for _ in 0..count {
            for &ci in &self.order {
                let c = &self.components[ci];
                for _ in 0..c.h * c.v {
                    bits.block(&c.dc, &c.ac, &mut dc[ci], &mut coeffs)?;
                }
            }
        }
        Some(())
    }

    /// The blocks of `rows` MCU rows in scan order: each block's component, and its offset in
    /// that component's rows of blocks, laid out as [`Scan::splice`] keeps them (every block of
    /// the MCU grid, 64 coefficients each, row after row).
    fn band_blocks(&self, rows: u32) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..rows).flat_map(move |my| {
            (0..self.mcus_x).flat_map(move |mx| {
                self.order.iter().flat_map(move |&ci| {
                    let c = &self.components[ci];
                    let width = (self.mcus_x * c.h) as usize;
                    (0..c.v).flat_map(move |by| {
                        (0..c.h).map(move |bx| {
                            let (row, col) = ((my * c.v + by) as usize, (mx * c.h + bx) as usize);
                            (ci, (row * width + col) * 64)
                        })
                    })
                })
            })
        })
    }

    /// Decodes every block, calling `block(component, block_row, block_col, coefficients)`
    /// with the coefficients in natural order, and returns where each MCU row starts. `None`
    /// when the data is corrupt.
    #[cfg(test)]
    pub fn decode(
        &self,
        mut block: impl FnMut(usize, u32, u32, &[i16; 64]),
    ) -> Option<Vec<RowStart>> {
        let mut bits = Bits::new(&self.data);
        let mut dc = vec![0i32; self.components.len()];
        let mut coeffs = [0i16; 64];
        let mut rows = Vec::with_capacity(self.mcus_y as usize);
        for my in 0..self.mcus_y {
            rows.push(RowStart {
                bit: bits.pos(),
                dc: dc.clone(),
            });
            for mx in 0..self.mcus_x {
                for &ci in &self.order {
                    let c = &self.components[ci];
                    for by in 0..c.v {
                        for bx in 0..c.h {
                            coeffs.fill(0);
                            bits.block(&c.dc, &c.ac, &mut dc[ci], &mut coeffs)?;
                            block(ci, my * c.v + by, mx * c.h + bx, &coeffs);
                        }
                    }
                }
            }
        }
        if bits.pos() > self.data.len() as u64 * 8 {
            return None; // ran past the end of the data
        }
        Some(rows)
    }
}

/// The headers of a JPEG (from SOI up to the end of its SOS segment) without the application
/// segments that may carry the unmarked image or facts about its author: EXIF and XMP (APP1,
/// whose thumbnail would show the image without its mark), Photoshop's (APP13), the others, and
/// comments. What decoding needs stays: JFIF (APP0), the ICC colour profile (APP2) and Adobe's
/// colour transform (APP14), with every table and frame header. The other paths keep no
/// metadata at all; this one keeps the colour profile as well.
fn headers(head: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(head.len());
    out.extend_from_slice(head.get(..2)?);
    let mut at = 2;
    while at < head.len() {
        if *head.get(at)? != 0xff {
            return None;
        }
        let marker = *head.get(at + 1)?;
        let len = u16::from_be_bytes([*head.get(at + 2)?, *head.get(at + 3)?]) as usize;
        let segment = head.get(at..at + 2 + len)?;
        let keep = match marker {
            0xe0 | 0xee => true,
            0xe2 => segment.get(4..16) == Some(b"ICC_PROFILE\0"),
            0xe1 | 0xe3..=0xed | 0xef | 0xfe => false,
            _ => true,
        };
        if keep {
            out.extend_from_slice(segment);
        }
        at += 2 + len;
    }
    Some(out)
}

/// The entropy-coded data from `data` on, unstuffed, and the offset of the marker that ends it
/// (fill bytes `FF` before the marker included).
fn unstuff(data: &[u8]) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(data.len());
    let mut at = 0;
    while at < data.len() {
        let Some(ff) = data[at..].iter().position(|&b| b == 0xff) else {
            out.extend_from_slice(&data[at..]);
            return (out, data.len());
        };
        out.extend_from_slice(&data[at..at + ff]);
        at += ff;
        if data.get(at + 1) == Some(&0) {
            out.push(0xff);
            at += 2;
        } else {
            return (out, at);
        }
    }
    (out, data.len())
}

/// A reader of bits, most significant first, past whose end come zeros (as libjpeg reads
/// them).
struct Bits<'a> {
    data: &'a [u8],
    /// The next byte of `data` to load.
    next: usize,
    /// The bits not consumed yet, from the most significant; the bits below the first `n`
    /// are either zero or the same bits of `data` that come next.
    acc: u64,
    n: u32,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self::at(data, 0)
    }

    /// A reader that starts at bit `bit` of `data`.
    fn at(data: &'a [u8], bit: u64) -> Self {
        let mut bits = Self {
            data,
            next: (bit / 8) as usize,
            acc: 0,
            n: 0,
        };
        bits.refill();
        bits.consume((bit % 8) as u32);
        bits
    }

    /// The position of the next bit to read.
    fn pos(&self) -> u64 {
        self.next as u64 * 8 - self.n as u64
    }

    /// Loads bytes until at least 56 bits are ready.
    #[inline]
    fn refill(&mut self) {
        if let Some(word) = self.data.get(self.next..self.next + 8) {
            let word = u64::from_be_bytes(word.try_into().expect("8 bytes"));
            self.acc |= word >> self.n;
            let bytes = (63 - self.n) / 8;
            self.next += bytes as usize;
            self.n += bytes * 8;
        } else {
            while self.n <= 56 {
                let byte = self.data.get(self.next).copied().unwrap_or(0);
                self.acc |= (byte as u64) << (56 - self.n);
                self.next += 1;
                self.n += 8;
            }
        }
    }

    #[inline]
    fn consume(&mut self, k: u32) {
        self.acc = if k >= 64 { 0 } else { self.acc << k };
        self.n -= k;
    }

    /// The next `k` bits (1 to 32), without consuming them; at least `k` must be loaded.
    #[inline]
    fn peek(&self, k: u32) -> u32 {
        (self.acc >> (64 - k)) as u32
    }

    /// The next `k` bits (0 to 32); at least `k` must be loaded.
    #[inline]
    fn take(&mut self, k: u32) -> u32 {
        if k == 0 {
            return 0;
        }
        let v = self.peek(k);
        self.consume(k);
        v
    }

    /// One Huffman-coded symbol; at least 16 bits must be loaded.
    #[inline(always)]
    fn symbol(&mut self, table: &Huffman) -> Option<u8> {
        let fast = table.fast[self.peek(FAST_BITS) as usize];
        if fast != 0 {
            self.consume((fast >> 8) as u32);
            return Some(fast as u8);
        }
        let word = self.peek(16);
        for len in FAST_BITS + 1..=16 {
            let code = (word >> (16 - len)) as i32;
            if code <= table.maxcode[len as usize] {
                self.consume(len);
                return table
                    .symbols
                    .get((code + table.offset[len as usize]) as usize)
                    .copied();
            }
        }
        None
    }

    /// One block: the DC difference (added to `dc`) and the AC coefficients, into `out` in
    /// natural order.
    fn block(
        &mut self,
        dc_table: &Huffman,
        ac_table: &Huffman,
        dc: &mut i32,
        out: &mut [i16; 64],
    ) -> Option<()> {
        if self.n < 32 {
            self.refill();
        }
        let size = self.symbol(dc_table)? as u32;
        if size > 11 {
            return None;
        }
        *dc = dc.wrapping_add(extend(self.take(size), size));
        out[0] = *dc as i16;
        let mut k = 1;
        while k < 64 {
            if self.n < 32 {
                self.refill();
            }
            let fast = ac_table.fast_ac[self.peek(FAST_BITS) as usize];
            if fast != 0 {
                self.consume((fast & 255) as u32);
                k += ((fast >> 8) & 255) as usize;
                if k > 63 {
                    return None;
                }
                out[ZIGZAG[k]] = (fast >> 16) as i16;
                k += 1;
                continue;
            }
            let rs = self.symbol(ac_table)?;
            let (run, size) = ((rs >> 4) as usize, (rs & 15) as u32);
            if size == 0 {
                if run == 15 {
                    k += 16;
                    continue;
                }
                break; // end of block
            }
            k += run;
            if k > 63 {
                return None;
            }
            out[ZIGZAG[k]] = extend(self.take(size), size) as i16;
            k += 1;
        }
        Some(())
    }
}

/// A writer of bits, most significant first, into bytes without stuffing.
struct BitWriter {
    out: Vec<u8>,
    acc: u64,
    /// Bits in `acc` not yet written out (fewer than 32 between calls).
    n: u32,
}

impl BitWriter {
    fn with_capacity(bytes: usize) -> Self {
        Self {
            out: Vec::with_capacity(bytes),
            acc: 0,
            n: 0,
        }
    }

    /// The low `len` bits of `bits` (`len` at most 32).
    fn put(&mut self, bits: u32, len: u32) {
        if len == 0 {
            return;
        }
        self.acc = (self.acc << len) | (bits as u64 & ((1u64 << len) - 1));
        self.n += len;
        if self.n >= 32 {
            self.n -= 32;
            self.out
                .extend_from_slice(&((self.acc >> self.n) as u32).to_be_bytes());
        }
    }

    /// Bits `from..to` of `data`.
    fn copy(&mut self, data: &[u8], mut from: u64, to: u64) {
        if self.n == 0 && from.is_multiple_of(8) {
            // Aligned on both sides: whole bytes at once.
            let whole = ((to - from) / 8) as usize;
            let start = (from / 8) as usize;
            self.out.extend_from_slice(&data[start..start + whole]);
            from += whole as u64 * 8;
        }
        let mut reader = Bits::at(data, from);
        while reader.pos() + 32 <= to {
            if reader.n < 32 {
                reader.refill();
            }
            let word = reader.take(32);
            self.put(word, 32);
        }
        reader.refill();
        let left = (to - reader.pos()) as u32;
        let word = reader.take(left);
        self.put(word, left);
    }

    fn symbol(&mut self, table: &Huffman, symbol: u8) -> Option<()> {
        let (code, len) = table.codes[symbol as usize];
        if len == 0 {
            return None;
        }
        self.put(code as u32, len as u32);
        Some(())
    }

    /// One block (natural order), its DC coded as the difference from `dc`.
    fn block(
        &mut self,
        block: &[i16; 64],
        dc: &mut i32,
        dc_table: &Huffman,
        ac_table: &Huffman,
    ) -> Option<()> {
        let diff = (block[0] as i32).wrapping_sub(*dc);
        *dc = block[0] as i32;
        let (size, bits) = category(diff);
        if size > 11 {
            return None;
        }
        self.symbol(dc_table, size as u8)?;
        self.put(bits, size);
        let mut run = 0u8;
        for &natural in &ZIGZAG[1..] {
            let v = block[natural] as i32;
            if v == 0 {
                run += 1;
                continue;
            }
            while run > 15 {
                self.symbol(ac_table, 0xf0)?;
                run -= 16;
            }
            let (size, bits) = category(v);
            if size > 10 {
                return None;
            }
            self.symbol(ac_table, (run << 4) | size as u8)?;
            self.put(bits, size);
            run = 0;
        }
        if run > 0 {
            self.symbol(ac_table, 0)?;
        }
        Some(())
    }

    /// The bytes, the last one filled with one bits.
    fn finish(mut self) -> Vec<u8> {
        let pad = (8 - self.n % 8) % 8;
        self.put((1 << pad) - 1, pad);
        while self.n >= 8 {
            self.n -= 8;
            self.out.push((self.acc >> self.n) as u8);
        }
        self.out
    }
}

/// The size category of a coefficient and the bits that code it (the inverse of [`extend`]).
fn category(v: i32) -> (u32, u32) {
    if v == 0 {
        return (0, 0);
    }
    let size = 32 - v.unsigned_abs().leading_zeros();
    let bits = if v < 0 { v - 1 } else { v } as u32 & ((1u32 << size) - 1);
    (size, bits)
}

/// A coefficient from its `size` bits (JPEG's EXTEND).
fn extend(v: u32, size: u32) -> i32 {
    if size == 0 {
        0
    } else if v < 1 << (size - 1) {
        v as i32 - (1 << size) + 1
    } else {
        v as i32
    }
}
