<?xml version="1.0" encoding="UTF-8"?>
<!-- aquamask water frequency style (for GeoServer): uint8 percentage (0-100) of the valid
     observations in which water was seen, 255 where no observation was valid. Graduated from
     pale to dark blue; never wet (0) and no valid observation (-1) are transparent. The same
     classes as the MapServer mapfile (config/mapfile.j2, FREQUENCY_CLASSES in
     processes/publishers/mapserver.py). GeoServer's intervals take each entry's colour
     from the previous entry's quantity (included) to its own (excluded): on whole percentages,
     (0, 10] is [0.5, 10.5). -->
<StyledLayerDescriptor version="1.0.0"
    xmlns="http://www.opengis.net/sld"
    xmlns:ogc="http://www.opengis.net/ogc"
    xmlns:xlink="http://www.w3.org/1999/xlink"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
    xsi:schemaLocation="http://www.opengis.net/sld http://schemas.opengis.net/sld/1.0.0/StyledLayerDescriptor.xsd">
  <NamedLayer>
    <Name>water-frequency</Name>
    <UserStyle>
      <Name>water-frequency</Name>
      <Title>Water frequency</Title>
      <Abstract>How often water was seen among the valid observations of each pixel.</Abstract>
      <IsDefault>1</IsDefault>
      <FeatureTypeStyle>
        <Rule>
          <Name>frequency</Name>
          <Title>Water frequency</Title>
          <RasterSymbolizer>
            <Opacity>1.0</Opacity>
            <ColorMap type="intervals">
              <ColorMapEntry color="#000000" quantity="0.5" opacity="0" label="Never water"/>
              <ColorMapEntry color="#deebf7" quantity="10.5" opacity="1" label="Water in up to 10 % of observations"/>
              <ColorMapEntry color="#9ecae1" quantity="25.5" opacity="1" label="10-25 %"/>
              <ColorMapEntry color="#4292c6" quantity="50.5" opacity="1" label="25-50 %"/>
              <ColorMapEntry color="#2171b5" quantity="75.5" opacity="1" label="50-75 %"/>
              <ColorMapEntry color="#08306b" quantity="100.5" opacity="1" label="75-100 %"/>
              <ColorMapEntry color="#000000" quantity="256" opacity="0" label="No valid observation"/>
            </ColorMap>
          </RasterSymbolizer>
        </Rule>
      </FeatureTypeStyle>
    </UserStyle>
  </NamedLayer>
</StyledLayerDescriptor>
