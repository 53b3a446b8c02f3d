set title 'wire bytes per generated token (mean over points)'
set style data histograms
set style fill solid 0.8 border -1
set ylabel 'bytes per token'
set yrange [0:*]
set key outside right autotitle columnhead
set grid y
plot 'bytes_by_dtype.dat' using 2:xtic(1)
