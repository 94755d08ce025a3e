//! Reading the entropy-coded data of a baseline JPEG ourselves (sequential, Huffman, 8-bit, one
//! scan, no restart intervals): every block's quantised coefficients, decoded exactly as libjpeg
//! decodes them (a test compares the two), and where each MCU row starts in the bitstream with
//! the DC predictors at that point.
//!
//! This is the first half of copying the MCU rows that an anchored mark does not touch instead of
//! re-encoding them (the stretch target of the DCT path): a splice needs to know the bit at which
//! the first changed row begins and the DC values that its first blocks are predicted from. It is
//! not used by the image path yet; the encoder and the splice come next.

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
}

const FAST_BITS: u32 = 9;

impl Huffman {
    /// From a DHT table: the number of codes of each length 1–16, then the symbols.
    fn new(counts: &[u8; 16], symbols: &[u8]) -> Option<Self> {
        let mut fast = vec![0u16; 1 << FAST_BITS];
        let mut maxcode = [-1i32; 17];
        let mut offset = [0i32; 17];
        let mut code: i32 = 0;
        let mut index: i32 = 0;
        for len in 1..=16u32 {
            let n = counts[len as usize - 1] as i32;
            offset[len as usize] = index - code;
            for _ in 0..n {
                let symbol = *symbols.get(index as usize)?;
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
        Some(Self {
            fast,
            maxcode,
            offset,
            symbols: symbols.get(..index as usize)?.to_vec(),
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
    pub width: u32,
    pub height: u32,
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
                        width,
                        height,
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

    /// Decodes every block, calling `block(component, block_row, block_col, coefficients)`
    /// with the coefficients in natural order, and returns where each MCU row starts. `None`
    /// when the data is corrupt.
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
                bit: bits.pos,
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
        if bits.pos > self.data.len() as u64 * 8 {
            return None; // ran past the end of the data
        }
        Some(rows)
    }
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
    pos: u64,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    /// The next 32 bits, without consuming them.
    fn peek32(&self) -> u32 {
        let byte = (self.pos / 8) as usize;
        let mut word = [0u8; 8];
        if let Some(rest) = self.data.get(byte..) {
            let n = rest.len().min(8);
            word[..n].copy_from_slice(&rest[..n]);
        }
        (u64::from_be_bytes(word) << (self.pos % 8) >> 32) as u32
    }

    fn take(&mut self, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        let v = self.peek32() >> (32 - n);
        self.pos += n as u64;
        v
    }

    fn symbol(&mut self, table: &Huffman) -> Option<u8> {
        let word = self.peek32();
        let fast = table.fast[(word >> (32 - FAST_BITS)) as usize];
        if fast != 0 {
            self.pos += (fast >> 8) as u64;
            return Some(fast as u8);
        }
        for len in FAST_BITS + 1..=16 {
            let code = (word >> (32 - len)) as i32;
            if code <= table.maxcode[len as usize] {
                self.pos += len as u64;
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
        let size = self.symbol(dc_table)? as u32;
        if size > 11 {
            return None;
        }
        *dc += extend(self.take(size), size);
        out[0] = *dc as i16;
        let mut k = 1;
        while k < 64 {
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
