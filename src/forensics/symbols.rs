//! Unwinding (DWARF CFI, by framehop) and symbolization (DWARF line tables
//! by addr2line, then the ELF symbol tables) of stacks copied from other
//! threads. Runs only on the forensics thread: loading the images and
//! their debug info takes up to a second the first time.

use std::cell::OnceCell;
use std::ops::Range;

use addr2line::gimli::{self, EndianSlice, RunTimeEndian, Section};
use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, SymbolKind};

use super::Frame;
use crate::sys::stack::RawStack;

type Slice = EndianSlice<'static, RunTimeEndian>;

/// Frames kept per stack: deeper ones are cut (and the stack says so).
const MAX_FRAMES: usize = 128;

/// One mapped ELF file of the process.
struct Image {
    path: String,
    /// Where it is mapped.
    avma: Range<u64>,
    /// Added to an address in the file to get one in memory.
    bias: u64,
    dwarf: Option<addr2line::Context<Slice>>,
    /// The parsed file, for its symbol tables.
    file: object::File<'static>,
    /// Function symbols sorted by address: (address, size, mangled name),
    /// the names borrowed from the mapped file. Read on the first address
    /// the debug info does not cover.
    symbols: OnceCell<Vec<(u64, u64, &'static str)>>,
}

/// The process's images, loaded once, and an unwinder over them.
pub(super) struct Images {
    images: Vec<Image>,
    #[cfg(target_arch = "x86_64")]
    unwinder: framehop::x86_64::UnwinderX86_64<&'static [u8]>,
    #[cfg(target_arch = "x86_64")]
    cache: framehop::x86_64::CacheX86_64,
    /// The main executable, whose frames are the service's.
    executable: Option<String>,
}

impl Images {
    /// Reads `/proc/self/maps` and every ELF file mapped executable.
    pub(super) fn load() -> Images {
        let mut images = Images {
            images: Vec::new(),
            #[cfg(target_arch = "x86_64")]
            unwinder: framehop::x86_64::UnwinderX86_64::new(),
            #[cfg(target_arch = "x86_64")]
            cache: framehop::x86_64::CacheX86_64::new(),
            executable: std::fs::read_link("/proc/self/exe")
                .ok()
                .map(|p| p.to_string_lossy().into_owned()),
        };
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        for (path, mappings) in mapped_files(&maps) {
            if let Some(image) = images.open(&path, &mappings) {
                images.images.push(image);
            }
        }
        images
    }

    fn open(&mut self, path: &str, mappings: &[Mapping]) -> Option<Image> {
        let executable = mappings.iter().filter(|m| m.executable);
        let avma = executable.clone().map(|m| m.range.start).min()?
            ..executable.map(|m| m.range.end).max()?;
        let data = crate::sys::map_file_forever(std::path::Path::new(path)).ok()?;
        let file = object::File::parse(data).ok()?;
        // From the loader's executable mapping, not the first one of the
        // file: this module's own read-only mappings of the same file
        // (an earlier load) are listed too, at other addresses. That
        // mapping starts at file offset `offset`, which the segment holding
        // it places at `vaddr - p_offset + offset`.
        let code = mappings.iter().find(|m| m.executable)?;
        let segment = file.segments().find(|s| {
            let (start, size) = s.file_range();
            let executable = matches!(
                s.flags(),
                object::SegmentFlags::Elf { p_flags } if p_flags & object::elf::PF_X != 0
            );
            executable && (start & !0xfff) <= code.offset && code.offset < start + size
        })?;
        let (segment_offset, _) = segment.file_range();
        let bias = code
            .range
            .start
            .wrapping_sub(segment.address().wrapping_sub(segment_offset).wrapping_add(code.offset));
        let section = |name: &str| {
            let section = file.section_by_name(name)?;
            let uncompressed = section
                .compressed_file_range()
                .is_ok_and(|r| r.format == object::CompressionFormat::None);
            let data = section.data().ok().filter(|_| uncompressed)?;
            Some((section.address()..section.address() + section.size(), data))
        };
        #[cfg(target_arch = "x86_64")]
        {
            let (text_svma, text) = section(".text").unzip();
            let (eh_frame_svma, eh_frame) = section(".eh_frame").unzip();
            let (eh_frame_hdr_svma, eh_frame_hdr) = section(".eh_frame_hdr").unzip();
            let info = framehop::ExplicitModuleSectionInfo {
                base_svma: 0,
                text_svma,
                text,
                got_svma: section(".got").map(|(range, _)| range),
                eh_frame_svma,
                eh_frame,
                eh_frame_hdr_svma,
                eh_frame_hdr,
                debug_frame: section(".debug_frame").map(|(_, data)| data),
                ..Default::default()
            };
            use framehop::Unwinder;
            self.unwinder.add_module(framehop::Module::new(
                path.to_string(),
                avma.clone(),
                bias,
                info,
            ));
        }
        let endian =
            if file.is_little_endian() { RunTimeEndian::Little } else { RunTimeEndian::Big };
        let dwarf = gimli::Dwarf::load(|id| -> Result<Slice, gimli::Error> {
            Ok(EndianSlice::new(section(id.name()).map_or(&[][..], |(_, data)| data), endian))
        })
        .ok()
        .filter(|dwarf: &gimli::Dwarf<Slice>| !dwarf.debug_info.reader().is_empty())
        .and_then(|dwarf| addr2line::Context::from_dwarf(dwarf).ok());
        Some(Image { path: path.to_string(), avma, bias, dwarf, file, symbols: OnceCell::new() })
    }

    /// The frames of `raw`, innermost first, and whether the unwinder
    /// reached the root of the stack.
    pub(super) fn unwind(&mut self, raw: &RawStack) -> (Vec<Frame>, bool) {
        let mut frames = Vec::new();
        let (lookups, complete) = self.addresses(raw);
        for (address, lookup) in lookups {
            self.symbolize(address, lookup, &mut frames);
        }
        (frames, complete)
    }

    /// Return addresses (with the address to look each up at).
    #[cfg(target_arch = "x86_64")]
    fn addresses(&mut self, raw: &RawStack) -> (Vec<(u64, u64)>, bool) {
        use framehop::Unwinder;
        let mut read_stack = |address: u64| -> Result<u64, ()> {
            let offset = usize::try_from(address.checked_sub(raw.sp).ok_or(())?).map_err(drop)?;
            let word = raw.bytes.get(offset..offset + 8).ok_or(())?;
            Ok(u64::from_ne_bytes(word.try_into().map_err(drop)?))
        };
        let regs = framehop::x86_64::UnwindRegsX86_64::new(raw.ip, raw.sp, raw.fp);
        let mut iter = self.unwinder.iter_frames(raw.ip, regs, &mut self.cache, &mut read_stack);
        let mut addresses = Vec::new();
        loop {
            match iter.next() {
                Ok(Some(frame)) if addresses.len() < MAX_FRAMES => {
                    addresses.push((frame.address(), frame.address_for_lookup()))
                }
                Ok(None) => return (addresses, true),
                Ok(Some(_)) | Err(_) => return (addresses, false),
            }
        }
    }

    /// Only the interrupted instruction: no unwinder for this architecture.
    #[cfg(not(target_arch = "x86_64"))]
    fn addresses(&mut self, raw: &RawStack) -> (Vec<(u64, u64)>, bool) {
        (vec![(raw.ip, raw.ip)], false)
    }

    /// Appends the frames at `address` (several when functions were
    /// inlined into it, innermost first).
    fn symbolize(&self, address: u64, lookup: u64, frames: &mut Vec<Frame>) {
        let image = self.images.iter().find(|image| image.avma.contains(&lookup));
        let Some(image) = image else {
            frames.push(Frame::unknown(address));
            return;
        };
        let probe = lookup.wrapping_sub(image.bias);
        let runtime_image = self.executable.as_deref() != Some(image.path.as_str());
        let before = frames.len();
        if let Some(dwarf) = &image.dwarf {
            if let Ok(mut found) = dwarf.find_frames(probe).skip_all_loads() {
                while let Ok(Some(frame)) = found.next() {
                    let function =
                        frame.function.as_ref().and_then(|f| f.demangle().ok()).map(|f| f.into());
                    let location = frame
                        .location
                        .as_ref()
                        .and_then(|l| Some(format!("{}:{}", l.file?, l.line.unwrap_or(0))));
                    frames.push(Frame::new(address, function, location, runtime_image));
                }
            }
        }
        if frames.len() == before {
            let symbols = image.symbols.get_or_init(|| function_symbols(&image.file));
            let function = symbols[..symbols.partition_point(|&(start, _, _)| start <= probe)]
                .last()
                .filter(|&&(start, size, _)| size == 0 || probe < start + size)
                .map(|&(_, _, name)| rustc_demangle::demangle(name).to_string());
            let location = Some(image.path.rsplit('/').next().unwrap_or(&image.path).to_string());
            frames.push(Frame::new(address, function, location, runtime_image));
        }
    }
}

/// The function symbols of `file` (its symbol table, else its dynamic
/// one), sorted by address.
fn function_symbols(file: &object::File<'static>) -> Vec<(u64, u64, &'static str)> {
    let mut symbols: Vec<(u64, u64, &'static str)> = file
        .symbols()
        .chain(file.dynamic_symbols())
        .filter(|s| s.kind() == SymbolKind::Text && s.address() != 0)
        .filter_map(|s| Some((s.address(), s.size(), s.name().ok()?)))
        .collect();
    symbols.sort_unstable();
    symbols
}

/// One line of `/proc/self/maps` that maps a file.
#[derive(Debug, PartialEq, Eq)]
struct Mapping {
    range: Range<u64>,
    offset: u64,
    executable: bool,
}

/// The files of a `/proc/self/maps` listing with their mappings, in order
/// of first appearance.
fn mapped_files(maps: &str) -> Vec<(String, Vec<Mapping>)> {
    let mut files: Vec<(String, Vec<Mapping>)> = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms), Some(offset)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let path = fields.nth(2).unwrap_or("");
        if !path.starts_with('/') {
            continue; // anonymous, [stack], [vdso], [heap]
        }
        let Some((start, end)) = range.split_once('-') else { continue };
        let (Ok(start), Ok(end), Ok(offset)) = (
            u64::from_str_radix(start, 16),
            u64::from_str_radix(end, 16),
            u64::from_str_radix(offset, 16),
        ) else {
            continue;
        };
        let mapping = Mapping { range: start..end, offset, executable: perms.contains('x') };
        match files.iter_mut().find(|(known, _)| known == path) {
            Some((_, mappings)) => mappings.push(mapping),
            None => files.push((path.to_string(), vec![mapping])),
        }
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_are_grouped_by_file_and_anonymous_ones_skipped() {
        let maps = "\
55d0a0000000-55d0a0001000 r--p 00000000 fd:01 123 /usr/bin/vigil
55d0a0001000-55d0a0009000 r-xp 00001000 fd:01 123 /usr/bin/vigil
7f0000000000-7f0000021000 rw-p 00000000 00:00 0
7f1000000000-7f1000028000 r--p 00000000 fd:01 77 /usr/lib/libc.so.6
7f1000028000-7f10001bd000 r-xp 00028000 fd:01 77 /usr/lib/libc.so.6
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0 [stack]
7ffc00100000-7ffc00102000 r-xp 00000000 00:00 0 [vdso]
";
        let files = mapped_files(maps);
        let names: Vec<&str> = files.iter().map(|(path, _)| path.as_str()).collect();
        assert_eq!(names, ["/usr/bin/vigil", "/usr/lib/libc.so.6"]);
        assert_eq!(
            files[0].1[1],
            Mapping { range: 0x55d0a0001000..0x55d0a0009000, offset: 0x1000, executable: true }
        );
        assert!(!files[1].1[0].executable);
    }
}
