import java.io.ByteArrayOutputStream;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Properties;
import java.util.regex.Pattern;

/**
 * TorchServe 0.12's URL check, run on a rendered config.properties (tests/unit/test_allowed_urls_java.py).
 *
 * <p>Reads the file the way TorchServe's ConfigManager does ({@code Properties.load(InputStream)},
 * ISO-8859-1; {@code allowed_urls} split on ","), then, for each URL given on stdin (UTF-8,
 * separated by NUL), prints one line: "match" when a pattern matches the whole URL as
 * {@code ArchiveUtils.validateURL} does ({@code Pattern.compile(p, CASE_INSENSITIVE)
 * .matcher(url).matches()}), else "refuse". The first output line is the number of patterns.
 *
 * <p>Usage: {@code java AllowedUrls.java CONFIG_PROPERTIES < urls}
 */
public final class AllowedUrls {
    public static void main(String[] args) throws Exception {
        Properties properties = new Properties();
        try (InputStream in = Files.newInputStream(Path.of(args[0]))) {
            properties.load(in);
        }
        String value = properties.getProperty("allowed_urls", "file://.*|http(s)?://.*");
        List<Pattern> patterns = new ArrayList<>();
        for (String pattern : Arrays.asList(value.split(","))) {
            patterns.add(Pattern.compile(pattern, Pattern.CASE_INSENSITIVE));
        }
        StringBuilder out = new StringBuilder();
        out.append(patterns.size()).append('\n');
        ByteArrayOutputStream buffer = new ByteArrayOutputStream();
        System.in.transferTo(buffer);
        String input = buffer.toString(StandardCharsets.UTF_8);
        if (!input.isEmpty()) {
            for (String url : input.split("\0", -1)) {
                boolean match = false;
                for (Pattern pattern : patterns) {
                    if (pattern.matcher(url).matches()) {
                        match = true;
                        break;
                    }
                }
                out.append(match ? "match" : "refuse").append('\n');
            }
        }
        System.out.print(out);
    }
}
